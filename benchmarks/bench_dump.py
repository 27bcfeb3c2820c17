"""Dump throughput against the teachers' bare forward pass, on the same chunks, in one run.

    python benchmarks/bench_dump.py [--data WORK/data --teacher DIR --teacher DIR] [--chunks 256]

Without --data it builds random-init teachers from presets and random chunks (throughput does
not depend on the weights). Arms alternate (bare, dump, bare, dump, ...) and medians are quoted.
Prints a table, then one JSON line.
"""
from __future__ import annotations

from logitcache.memory import tune_heap

tune_heap()  # before torch is imported (logitcache/memory.py)

import argparse  # noqa: E402
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import emit_json, median, print_table, synthetic_data  # noqa: E402


def bare_forward(models, rows: np.ndarray, batch_size: int) -> float:
    """tokens/s of the teachers' plain forward passes (logits materialised, nothing else)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            ids = torch.from_numpy(rows[start:start + batch_size].astype(np.int64))
            for model in models:
                model(input_ids=ids).logits
    return rows.size / (time.perf_counter() - t0)


def main() -> None:
    from logitcache.data import load_data
    from logitcache.dump import DumpConfig, dump
    from logitcache.models import build_model, get_preset, load_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--teacher", type=Path, action="append")
    parser.add_argument("--presets", default="llama-small,gpt2-small", help="random-init teachers when no --teacher")
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench_dump_"))
    try:
        data_dir = args.data or synthetic_data(tmp / "data", args.vocab_size, args.chunks)
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
        # both arms run under the same allocator settings (tune_heap at process start)
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
        print_table(f"dump vs bare teacher forward ({len(models)} teachers, {args.chunks} chunks, vocab {data.vocab_size}, "
                    f"top-{args.top_k}, {device})", ["arm", "median tokens/s", "runs"],
                    [["bare forward", median(bare), ", ".join(f"{x:.0f}" for x in bare)],
                     ["dump (compute + encode + write)", median(full), ", ".join(f"{x:.0f}" for x in full)],
                     ["ratio dump / bare", ratio, ""]])
        emit_json({"bench": "dump", "bare_tokens_per_s": median(bare), "dump_tokens_per_s": median(full), "ratio": ratio,
                   "teachers": [str(d) for d in teacher_dirs], "chunks": args.chunks, "vocab_size": data.vocab_size,
                   "top_k": args.top_k, "device": device})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
