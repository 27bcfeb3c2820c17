"""Dump throughput against the teachers' bare forward pass, on the same chunks, in one run.

    python benchmarks/bench_dump.py [--data WORK/data --teacher DIR --teacher DIR] [--chunks 256]
    python benchmarks/bench_dump.py --vocab-sweep 32000,128000,256000 [--chunks 64]
    python benchmarks/bench_dump.py --writer --data work/demo/data --teacher work/demo/teachers/llama --teacher work/demo/teachers/gpt2
    python benchmarks/bench_dump.py --whole-process [--data ... --teacher ...] [--chunks 1024]

Without --data it builds random-init teachers from presets and random chunks (throughput does
not depend on the weights). Arms alternate (bare, dump, bare, dump, ...) and medians are quoted.
Prints a table, then one JSON line.

--vocab-sweep: large (padded-free) vocabularies. For each V, a word-level tokenizer of V ids, random
chunks and a tiny random-init LLaMA teacher (hidden 64) with vocabulary V; each dump runs in its own
process (peak RSS is per process), once with the default logit budget (1 GiB: the batch runs in row
slices) and once unbounded (the whole batch of 16 x 128 x V at once), so the table shows the bound.
"""
from __future__ import annotations

from logitcache.runtime.process import tune_process

tune_process()  # before torch is imported (logitcache/runtime/process.py)

import argparse  # noqa: E402
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import emit_json, median, peak_rss_mb, print_table, synthetic_data  # noqa: E402


def bare_forward(models, rows: np.ndarray, batch_size: int) -> float:
    """tokens/s of the teachers' plain forward passes (logits materialised, nothing else)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            ids = torch.from_numpy(rows[start:start + batch_size].astype(np.int64))
            for model in models:
                model(input_ids=ids).logits
    return rows.size / (time.perf_counter() - t0)


def word_level_data(out: Path, vocab_size: int, chunks: int, seq_len: int = 128) -> Path:
    """A prepared data dir whose tokenizer has exactly `vocab_size` ids (a word-level vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from logitcache.files import sha256_file
    from logitcache.data.prepared import fingerprint
    from logitcache.store import token_dtype, write_token_store

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(out / "tokenizer.json"))
    rng = np.random.default_rng(0)
    splits = {s: rng.integers(0, vocab_size, size=(n, seq_len)).astype(token_dtype(vocab_size))
              for s, n in (("train", chunks), ("dev", 8), ("test", 8))}
    sha = sha256_file(out / "tokenizer.json")
    write_token_store(out / "tokens.zarr", splits, {"kind": "tokens", "seq_len": seq_len, "vocab_size": vocab_size,
                                                    "sources": {}, "tokenizer_sha256": sha,
                                                    "fingerprint": fingerprint(sha, splits)})
    return out


WRITER_TEMPERATURES = (1.0, 2.0)
WRITER_BLOCK_ROWS = 256


def writer_blocks(data_dir: Path, teacher_dirs: list[Path], chunks: int, temperature: float, k: int = 32):
    """[(tokens, ids, probs)] blocks of `WRITER_BLOCK_ROWS` rows of the teachers' real top-k targets on the dev
    split at `temperature` (benchmarks/targets.py keeps them on disk); the last block may be shorter."""
    from targets import teacher_targets

    tokens, ids, probs = teacher_targets(data_dir, teacher_dirs, "dev", temperature, 128, chunks)
    ids, probs = np.ascontiguousarray(ids[..., :k]), np.ascontiguousarray(probs[..., :k])  # top-k of the top-128
    r = WRITER_BLOCK_ROWS
    return [(tokens[s:s + r], ids[s:s + r], probs[s:s + r]) for s in range(0, tokens.shape[0], r)]


def writer_compressions():
    """The compressions the frontier measures: the store's first setting, the earlier defaults, and the
    ids/probs levels around the default (ids byte-shuffled over the chunk, probs plain zstd)."""
    from logitcache.store import BASELINE_COMPRESSION, Compression

    candidates = [BASELINE_COMPRESSION, Compression(("zstd", 10), ("zstd", 10)), Compression(("blosc-chunk", 4), ("zstd", 5))]
    candidates += [Compression(("blosc-chunk", 4), ("zstd", p)) for p in (6, 7, 8, 9, 10)]
    candidates += [Compression(("blosc-chunk", 5), ("zstd", p)) for p in (7, 8)]
    candidates += [Compression(("blosc-chunk", 6), ("zstd", 10)), Compression(("blosc-chunk", 3), ("zstd", 3))]
    return list(dict.fromkeys(candidates))  # the default is one of them, listed once


def writer_frontier(data_dir: Path, teacher_dirs: list[Path], chunks: int, tmp: Path, repeats: int) -> None:
    """The host side alone: blocks of real teacher targets (top-32, sqrt-u7, dev split, at T = 1 and T = 2)
    encoded, compressed, checksummed and written, by writer threads and compression; the baseline is one
    thread at blosc-zstd level 7 (the store's first setting). The default is what `logitcache dump` runs:
    DumpConfig's writer threads and create_cache's compression. Speeds are wall-clock tokens/s and tokens
    per CPU-second of this process (which other processes' load on a shared machine does not inflate)."""
    import dataclasses

    from logitcache.data.prepared import load_data
    from logitcache.store.writers import BlockWriter
    from logitcache.teachers.targets import HostCopy
    from logitcache.config import DumpConfig
    from logitcache.store import (BASELINE_COMPRESSION, Targets, CacheLayout, CacheStore, Compression, cache_summary,
                                  create_cache)

    vocab_size = load_data(data_dir).vocab_size
    blocks_by_t = {t: writer_blocks(data_dir, teacher_dirs, chunks, t) for t in WRITER_TEMPERATURES}
    n_rows = sum(b[0].shape[0] for b in blocks_by_t[1.0])
    seq_len = blocks_by_t[1.0][0][0].shape[1]
    layout = CacheLayout(n_rows, seq_len, 32, vocab_size, WRITER_BLOCK_ROWS, "sqrt-u7")

    def write_all(temperature: float, threads: int, compression: Compression, via_zarr: bool = False) -> tuple[float, float]:
        out = tmp / f"w{threads}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        create_cache(out, layout, {"kind": "cache", "temperature": temperature}, compression=compression)
        store = CacheStore(out, mode="r+")
        if via_zarr:  # every chunk through zarr's setitem instead of the store's own chunk encoder
            store.encoders = {}
        t0, cpu0 = time.perf_counter(), time.process_time()
        if threads == 0:  # the baseline: the caller's thread, one block after another
            for b, (tokens, ids, probs) in enumerate(blocks_by_t[temperature]):
                store.write_block(b, Targets(tokens, ids, probs))
        else:
            writer = BlockWriter(store, threads=threads)
            for b, (tokens, ids, probs) in enumerate(blocks_by_t[temperature]):
                writer.put(b, tokens, HostCopy({"ids": torch.from_numpy(ids), "probs": torch.from_numpy(probs)}))
            writer.close()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        bytes_per_token = cache_summary(out)["bytes_per_token"]  # topk_ids + topk_probs
        shutil.rmtree(out)
        return n_rows * seq_len / seconds, bytes_per_token, n_rows * seq_len / cpu_seconds

    threads = next(f.default for f in dataclasses.fields(DumpConfig) if f.name == "writer_threads")
    defaults = {t: Compression() for t in WRITER_TEMPERATURES}  # create_cache's default, whatever the temperature
    arms = [(t, 0, BASELINE_COMPRESSION) for t in WRITER_TEMPERATURES]
    arms += [(t, threads, c) for c in writer_compressions() for t in WRITER_TEMPERATURES]
    arms += [(t, n, c) for t, c in defaults.items() for n in (1, threads) if (t, n, c) not in arms]
    results = {arm: [] for arm in arms}
    for _ in range(repeats):  # arms interleaved: machine noise hits every arm alike
        for arm in arms:
            results[arm].append(write_all(*arm))
    # (wall tokens/s, bytes/token, tokens per CPU-second of this process: other processes' load does not count)
    table = {arm: (median([r[0] for r in rs]), rs[0][1], median([r[2] for r in rs])) for arm, rs in results.items()}
    summary = {}
    for t in WRITER_TEMPERATURES:
        base_speed, base_bytes, _ = table[(t, 0, BASELINE_COMPRESSION)]
        default = (t, threads, defaults[t])
        mine = {arm: v for arm, v in table.items() if arm[0] == t}
        fast = {arm: v for arm, v in mine.items() if arm[1] == threads and v[0] >= 1e6}
        best_fast = min(fast, key=lambda arm: fast[arm][1]) if fast else None
        best_any = min(mine, key=lambda arm: mine[arm][1])
        rows_out = [["baseline (1 thread, serial)" if n == 0 else f"{n} writer thread(s)", c.label()
                     + (" (default)" if (t, n, c) == default else ""), speed, cpu, b, speed / base_speed, b / base_bytes]
                    for (_, n, c), (speed, b, cpu) in sorted(mine.items(), key=lambda kv: (kv[0][2] != BASELINE_COMPRESSION,
                                                                                         kv[0][1], kv[1][1]))]
        print_table(f"T = {t:g}: writer alone on {len(blocks_by_t[t])} blocks of up to {WRITER_BLOCK_ROWS} rows of real "
                    f"targets (dev split, top-32, sqrt-u7, vocab {vocab_size}; bytes of topk_ids + topk_probs; medians "
                    f"of {repeats})", ["writer", "compression", "tokens/s", "tokens/CPU-s", "bytes/token",
                                       "speed vs baseline", "size vs baseline"], rows_out)
        summary[f"T{t:g}"] = {
            "default": {"compression": defaults[t].label(), "threads": threads, "tokens_per_s": table[default][0],
                        "tokens_per_cpu_s": table[default][2], "bytes_per_token": table[default][1]},
            "best_at_1M_tokens_per_s": None if best_fast is None else {
                "compression": best_fast[2].label(), "tokens_per_s": table[best_fast][0],
                "bytes_per_token": table[best_fast][1], "default_bytes_ratio": table[default][1] / table[best_fast][1]},
            "smallest_any_speed": {"compression": best_any[2].label(), "threads": best_any[1],
                                   "tokens_per_s": table[best_any][0], "bytes_per_token": table[best_any][1],
                                   "default_bytes_ratio": table[default][1] / table[best_any][1]},
            "baseline_tokens_per_s": base_speed, "baseline_bytes_per_token": base_bytes,
        }
    paths = writer_paths(write_all, threads, repeats)
    writer_stages(blocks_by_t, vocab_size, repeats)
    emit_json({"bench": "dump-writer", "writer_threads": threads, **summary, "chunk_encoder": paths,
               "frontier": [{"temperature": t, "threads": n, "compression": c.label(), "tokens_per_s": v[0],
                             "tokens_per_cpu_s": v[2], "bytes_per_token": v[1]} for (t, n, c), v in table.items()]})


def writer_paths(write_all, threads: int, repeats: int) -> dict:
    """The default writer with the store's own chunk encoder (store/chunks.py) against every chunk through
    zarr's setitem, interleaved in one run: the same bytes, the speed ratio."""
    from logitcache.store import Compression

    runs = {(t, via): [] for t in WRITER_TEMPERATURES for via in (False, True)}
    for _ in range(repeats):
        for t, via in runs:
            runs[(t, via)].append(write_all(t, threads, Compression(), via_zarr=via))
    rows, out = [], {}
    for t in WRITER_TEMPERATURES:
        own, zarr_path = (median([r[0] for r in runs[(t, v)]]) for v in (False, True))
        assert runs[(t, False)][0][1] == runs[(t, True)][0][1]  # the same stored bytes
        rows += [[f"{t:g}", "own chunk encoder (default)", own, runs[(t, False)][0][1], own / zarr_path],
                 [f"{t:g}", "zarr's setitem", zarr_path, runs[(t, True)][0][1], 1.0]]
        out[f"T{t:g}"] = {"tokens_per_s": own, "via_zarr_tokens_per_s": zarr_path, "speedup": own / zarr_path}
    print_table(f"the default writer ({threads} threads): chunks encoded by the store against zarr's setitem "
                f"(medians of {repeats}, interleaved)", ["T", "path", "tokens/s", "bytes/token", "speed vs zarr"], rows)
    return out


def writer_stages(blocks_by_t: dict, vocab_size: int, repeats: int) -> None:
    """Each stage of the writer on its own, one thread, on the same blocks: the id sort and the probability
    code, then each stored array under each compressor (bytes/token of that array alone), per temperature
    (the id gaps do not depend on T: the top-k set is the same)."""
    from numcodecs import Blosc, Zstd, blosc

    from logitcache.store import encode_ids, prob_code

    code = prob_code("sqrt-u7")

    def tokens_per_s(work, n_tokens) -> float:
        """Tokens per second of this thread's CPU time (one thread: other processes' load does not count)."""
        times = []
        for _ in range(max(3, repeats)):
            t0 = time.thread_time()
            work()
            times.append(time.thread_time() - t0)
        return n_tokens / median(times)

    rows = []
    previous_threads = blosc.set_nthreads(1)  # else blosc would use its own threads for calls from the main thread
    for t, blocks in blocks_by_t.items():
        n_tokens = sum(ids.shape[0] * ids.shape[1] for _, ids, _ in blocks)
        encoded = [encode_ids(ids, vocab_size) for _, ids, _ in blocks]
        gaps = [g for g, _ in encoded]
        codes = [code.encode(np.take_along_axis(probs, order, axis=-1)) for (_, _, probs), (_, order) in zip(blocks, encoded)]
        rows.append([f"{t:g}", "ids to sorted gaps", "encode_ids", tokens_per_s(lambda: [encode_ids(i, vocab_size)
                                                                                        for _, i, _ in blocks], n_tokens), ""])
        rows.append([f"{t:g}", "probabilities to codes", "sqrt-u7 encode", tokens_per_s(
            lambda: [code.encode(p) for _, _, p in blocks], n_tokens), ""])
        arrays_by_name = (("probability codes", codes),) if t != 1.0 else (("id gaps", gaps), ("probability codes", codes))
        for name, arrays in arrays_by_name:
            codecs = [(f"zstd-{lv}", Zstd(level=lv)) for lv in (3, 5, 6, 7, 8, 9, 10)]
            if arrays[0].dtype.itemsize > 1:
                codecs = [(label, c) for label, c in codecs if label == "zstd-10"]
                codecs += [(f"blosc-chunk-{lv} (shuffle, zstd-{2 * lv - 1})", None) for lv in (3, 4, 5, 6)]
            for label, codec in codecs:
                def run(codec=codec):
                    return [(codec or Blosc("zstd", int(label.split()[0][-1]), Blosc.SHUFFLE, blocksize=a.nbytes)).encode(a)
                            for a in arrays]
                rows.append([f"{t:g}", name, label, tokens_per_s(run, n_tokens), sum(map(len, run())) / n_tokens])
    blosc.set_nthreads(previous_threads)
    print_table(f"writer stages alone, one thread (tokens per CPU-second of the thread, medians of {max(3, repeats)})",
                ["T", "stage", "method", "tokens/CPU-s", "bytes/token"], rows)


BARE_FORWARD = """
import sys
from logitcache.runtime.process import tune_process
tune_process()  # as the CLI does, before torch is imported: both processes run under the same heap and OpenMP settings
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from logitcache.data.prepared import load_data
from logitcache.teachers.models import load_model
rows = load_data(sys.argv[1]).store.split("train")[: int(sys.argv[2])]
models = [load_model(p) for p in sys.argv[5:]]
batch = int(sys.argv[4])
with torch.no_grad():
    for start in range(0, rows.shape[0], batch):
        ids = torch.from_numpy(rows[start:start + batch].astype(np.int64))
        for model in models:
            model(input_ids=ids).logits
"""


def whole_process(data_dir: Path, teacher_dirs: list[Path], chunks: int, batch_size: int, threads: int, repeats: int,
                  tmp: Path) -> None:
    """`logitcache dump` as a whole process (start-up, loading, writing, exit) against a whole process that
    loads the same teachers and runs their bare forward over the same chunks."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    forward_cmd = [sys.executable, "-c", BARE_FORWARD, str(data_dir), str(chunks), str(threads), str(batch_size),
                   *map(str, teacher_dirs)]
    cli = str(Path(sys.executable).with_name("logitcache"))
    bare, full = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(forward_cmd, check=True, env=env, capture_output=True)
        bare.append(time.perf_counter() - t0)
        out = tmp / f"whole{r}.zarr"
        dump_cmd = [cli, "dump", "--data", str(data_dir), *[a for t in teacher_dirs for a in ("--teacher", str(t))],
                    "--out", str(out), "--top-k", "32", "--batch-size", str(batch_size), "--max-chunks", str(chunks),
                    "--row-selection", "first", "--device", "cpu"]
        t0 = time.perf_counter()
        subprocess.run(dump_cmd, check=True, env=env, capture_output=True)
        full.append(time.perf_counter() - t0)
        shutil.rmtree(out)
    ratio = median(bare) / median(full)
    print_bare_vs_dump(f"whole processes: dump vs bare teacher forward ({len(teacher_dirs)} teachers, {chunks} chunks, "
                       f"{threads} threads, medians of {repeats})", ["process", "median seconds", "runs"],
                       ("bare forward (load + forward)", bare), ("logitcache dump", full),
                       ("ratio forward time / dump time", ratio), digits=1)
    emit_json({"bench": "dump-whole-process", "forward_s": median(bare), "dump_s": median(full), "dump_vs_forward": ratio,
               "teachers": [str(t) for t in teacher_dirs], "chunks": chunks})


def print_bare_vs_dump(title: str, columns: list[str], bare: tuple[str, list], dump: tuple[str, list],
                       ratio: tuple[str, float], digits: int) -> None:
    """The two arms (label, runs) with their medians and every run, then the ratio row."""
    rows = [[label, median(runs), ", ".join(f"{x:.{digits}f}" for x in runs)] for label, runs in (bare, dump)]
    print_table(title, columns, rows + [[ratio[0], ratio[1], ""]])


def child_dump(data: Path, teacher: Path, out: Path, chunks: int, budget_mb: int) -> None:
    """One dump in this process; prints {"tokens_per_s", "peak_rss_mb"} as JSON."""
    import json
    from logitcache.dump import DumpConfig, dump

    report = dump(DumpConfig(data=data, teachers=(teacher,), out=out, top_k=32, batch_size=16, block_rows=64,
                             max_chunks=chunks, row_selection="first", device="cpu", logit_budget_mb=budget_mb))
    print(json.dumps({"tokens_per_s": report.tokens_per_s,
                      "peak_rss_mb": peak_rss_mb()}))


def vocab_sweep(vocabs: list[int], chunks: int, tmp: Path) -> None:
    import json
    import subprocess
    import sys

    import transformers

    rows = []
    for vocab in vocabs:
        data = word_level_data(tmp / f"data{vocab}", vocab, chunks)
        teacher = tmp / f"teacher{vocab}"
        torch.manual_seed(0)
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(teacher)
        for label, budget in (("1 GiB budget (default)", 1024), ("unbounded", 1 << 20)):
            out = tmp / f"cache{vocab}-{budget}.zarr"
            proc = subprocess.run([sys.executable, __file__, "--child", str(data), str(teacher), str(out), str(chunks),
                                   str(budget)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"vocab": vocab, "budget": label, **result,
                         "batch_logits_mb": 16 * 128 * vocab * 4 / 2**20})
            shutil.rmtree(out, ignore_errors=True)
    print_table(f"dump at large vocabularies (1 tiny LLaMA teacher, hidden 64; {chunks} chunks of 128; batch 16; top-32; cpu)",
                ["vocab", "logit memory", "tokens/s", "peak RSS MB", "one (16, 128, V) fp32 buffer MB"],
                [[r["vocab"], r["budget"], r["tokens_per_s"], r["peak_rss_mb"], r["batch_logits_mb"]] for r in rows])
    emit_json({"bench": "dump-vocab", "rows": rows})


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        data, teacher, out, chunks, budget = sys.argv[2:7]
        torch.set_num_threads(2)
        return child_dump(Path(data), Path(teacher), Path(out), int(chunks), int(budget))
    from logitcache.data.prepared import load_data
    from logitcache.dump import DumpConfig, dump
    from logitcache.teachers.models import build_model, get_preset, load_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--teacher", type=Path, action="append")
    parser.add_argument("--presets", default="llama-small,gpt2-small", help="random-init teachers when no --teacher")
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--chunks", type=int, help="chunks (default 256; --writer: 0, the whole dev split)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab-sweep", default="", help="comma-separated vocabulary sizes (e.g. 32000,128000,256000)")
    parser.add_argument("--writer", action="store_true", help="the host-side writer alone (needs --data and --teacher)")
    parser.add_argument("--whole-process", action="store_true", help="dump and bare forward as whole processes")
    args = parser.parse_args()
    if args.chunks is None:
        args.chunks = 0 if args.writer else 256
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench_dump_"))
    try:
        if args.vocab_sweep:
            return vocab_sweep([int(v) for v in args.vocab_sweep.split(",")], args.chunks, tmp)
        if args.writer:
            if not (args.data and args.teacher):
                raise SystemExit("--writer needs --data and --teacher (trained teachers, e.g. work/demo after make demo)")
            return writer_frontier(args.data, args.teacher, args.chunks, tmp, args.repeats)
        data_dir = args.data or synthetic_data(tmp / "data", args.vocab_size, args.chunks)
        if args.whole_process and not args.teacher:
            args.teacher = []
            for preset in args.presets.split(","):
                build_model(get_preset(preset), load_data(data_dir).vocab_size).save_pretrained(str(tmp / preset))
                shutil.copy(data_dir / "tokenizer.json", tmp / preset / "tokenizer.json")
                args.teacher.append(tmp / preset)
        if args.whole_process:
            return whole_process(data_dir, args.teacher, args.chunks, args.batch_size, args.threads, args.repeats, tmp)
        data = load_data(data_dir)
        if args.teacher:
            teacher_dirs = args.teacher
        else:
            teacher_dirs = []
            for preset in args.presets.split(","):
                build_model(get_preset(preset), data.vocab_size).save_pretrained(str(tmp / preset))
                shutil.copy(data_dir / "tokenizer.json", tmp / preset / "tokenizer.json")
                teacher_dirs.append(tmp / preset)
        rows = data.store.split("train")[: args.chunks]
        models = [load_model(d) for d in teacher_dirs]
        bare, full = [], []
        # both arms run under the same allocator settings and OpenMP spin (tune_process at process start)
        bare_forward(models, rows[: args.batch_size], args.batch_size)  # warm-up
        for r in range(args.repeats):
            bare.append(bare_forward(models, rows, args.batch_size))
            out = tmp / f"cache{r}.zarr"
            report = dump(DumpConfig(data=data_dir, teachers=tuple(teacher_dirs), out=out, top_k=args.top_k,
                                     batch_size=args.batch_size, block_rows=64, max_chunks=args.chunks,
                                     row_selection="first", device="cpu"))
            full.append(report.tokens_per_s)
            shutil.rmtree(out)
        ratio = median(full) / median(bare)
        device = "cuda" if torch.cuda.is_available() else f"cpu x{args.threads} threads"
        print_bare_vs_dump(f"dump vs bare teacher forward ({len(models)} teachers, {args.chunks} chunks, vocab "
                           f"{data.vocab_size}, top-{args.top_k}, {device})", ["arm", "median tokens/s", "runs"],
                           ("bare forward", bare), ("dump (compute + encode + write)", full), ("ratio dump / bare", ratio),
                           digits=0)
        emit_json({"bench": "dump", "bare_tokens_per_s": median(bare), "dump_tokens_per_s": median(full), "ratio": ratio,
                   "teachers": [str(d) for d in teacher_dirs], "chunks": args.chunks, "vocab_size": data.vocab_size,
                   "top_k": args.top_k, "device": device})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
