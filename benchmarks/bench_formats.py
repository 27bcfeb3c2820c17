"""The same top-k targets in logitcache's probability codes and in Megatron's offline-logit format, side by side.

    python benchmarks/bench_formats.py --data work/demo/data --teacher work/demo/teachers/llama \\
        --teacher work/demo/teachers/gpt2 [--chunks 0] [--temperatures 1,2] [--k 32,50,128]

Targets: the teachers' ensemble (mean-logits) top-k on the dev split at each temperature (benchmarks/targets.py
computes them once and keeps them under work/). Each logitcache code is written as a real cache (create_cache,
the store's default compression) and read back through open_cache and verify_cache; its bytes are the target
arrays' (topk_ids + topk_probs) on disk. Megatron's format is implemented here from its description: per shard,
fp16 top-k log-probabilities and uint16 ids (decreasing probability), one torch.save, compressed with zstd
level 3; a shard is a block of the cache's 256 rows, so both formats compress the same rows together.

Fidelity, against the float32 top-k the teachers computed: max |delta p| over every kept entry (what the reader
returns against the true p), whether every position's ids are exactly the true ones, and the mean over
positions of KL(true top-k renormalised || decoded top-k renormalised) in nats (decoded zeros: floored at 1e-12,
and counted). DistillKit's sizes are not rerun here: its README's (~114 B/token for its budget pick at k = 50,
~300 for its recommended preset at k = 128) and, at k = 32, T = 2, its recommended compressed preset as measured
on these teachers (89 B/token, mean KL 4.5e-5).

Prints one table per temperature, then one JSON line: at T = 2, k = 32, the bytes/token of the smallest
logitcache setting at equal or better fidelity than Megatron's format and than DistillKit's recommended preset,
and its ratio to theirs.
"""
from __future__ import annotations

from logitcache.runtime.process import tune_process

tune_process()  # before torch is imported (logitcache/runtime/process.py)

import argparse  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import emit_json, print_table  # noqa: E402

BLOCK_ROWS = 256
CODES = ("sqrt-u7", "sqrt-u8", "log-u7", "log-u8", "log-u9", "log-u10", "log-u11", "log-u12", "log-s272", "log-u13", "float16", "float32")
KL_FLOOR = 1e-12
# DistillKit, not rerun: (k, T or None, bytes/token, mean KL or None, where the figure comes from)
DISTILLKIT = [(32, 2.0, 89.0, 4.5e-5, "recommended compressed preset, measured on the demo teachers"),
              (50, None, 114.0, None, "README: budget pick (k = 50)"),
              (128, None, 300.0, None, "README: recommended preset (k = 128)")]


def fidelity(true_ids: np.ndarray, true_probs: np.ndarray, ids: np.ndarray, probs: np.ndarray) -> dict:
    """Decoded (ids, probs) (N, T, K) in any order per position against the true ones; each side is put in
    ascending id order first, so equal ids line up."""
    def by_id(i, p):
        order = np.argsort(i, axis=-1, kind="stable")
        return np.take_along_axis(i, order, -1), np.take_along_axis(p, order, -1).astype(np.float64)

    ti, tp = by_id(true_ids, true_probs)
    di, dp = by_id(ids, probs)
    exact = bool(np.array_equal(ti, di))
    p = tp / tp.sum(-1, keepdims=True)  # (N, T, K) the true top-k, renormalised
    zeros = int((dp <= 0).sum())
    q = np.maximum(dp, KL_FLOOR)
    q = q / q.sum(-1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)  # (N, T) nats per position
    return {"max_abs_dp": float(np.abs(dp - tp).max()) if exact else float("nan"), "ids_exact": exact,
            "mean_kl": float(kl.mean()) if exact else float("nan"), "decoded_zeros": zeros}


def logitcache_format(tokens, ids, probs, code: str, vocab_size: int, tmp: Path) -> dict:
    """Write a cache with `code`, read it back with open_cache, verify it; bytes of topk_ids + topk_probs."""
    from logitcache import open_cache
    from logitcache.store import Targets, CacheLayout, CacheStore, cache_summary, create_cache, verify_cache

    n, t, k = ids.shape
    out = tmp / f"{code}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    layout = CacheLayout(n, t, k, vocab_size, BLOCK_ROWS, code)
    create_cache(out, layout, {"kind": "cache", "temperature": 1.0})
    store = CacheStore(out, mode="r+")
    cpu0 = time.thread_time()
    for b in range(layout.n_blocks):
        s, e = layout.block_range(b)
        store.write_block(b, Targets(tokens[s:e], ids[s:e], probs[s:e]))
    cpu = time.thread_time() - cpu0
    cached = open_cache(out).read(0, n)
    got_ids, got_probs = cached.ids, cached.probs
    result = {"format": f"logitcache {code}", "bytes_per_token": cache_summary(out)["bytes_per_token"],
              "encode_tokens_per_cpu_s": n * t / cpu, "verify": "ok" if not verify_cache(out) else "problems",
              **fidelity(ids, probs, got_ids, got_probs)}
    shutil.rmtree(out)
    return result


def megatron_format(ids: np.ndarray, probs: np.ndarray) -> dict:
    """fp16 log-probabilities + uint16 ids per shard, torch.save, zstd level 3; decoded p = exp(logprob)."""
    from numcodecs import Zstd

    assert int(ids.max()) < 2**16, "Megatron's format stores uint16 ids"
    n, t, _ = ids.shape
    zstd = Zstd(level=3)
    total, decoded_ids, decoded_probs = 0, [], []
    cpu0, cpu = time.thread_time(), 0.0
    for s in range(0, n, BLOCK_ROWS):
        shard = {"topk_logprobs": torch.from_numpy(np.log(probs[s:s + BLOCK_ROWS])).to(torch.float16),
                 "topk_ids": torch.from_numpy(ids[s:s + BLOCK_ROWS].astype(np.uint16).view(np.int16))}
        buffer = io.BytesIO()
        torch.save(shard, buffer)
        blob = zstd.encode(buffer.getvalue())
        total += len(blob)
        cpu += time.thread_time() - cpu0
        loaded = torch.load(io.BytesIO(bytes(zstd.decode(blob))))  # the reader's side, not timed
        decoded_ids.append(loaded["topk_ids"].numpy().view(np.uint16).astype(np.int64))
        decoded_probs.append(np.exp(loaded["topk_logprobs"].float().numpy()))
        cpu0 = time.thread_time()
    return {"format": "Megatron (fp16 log-probs, uint16 ids, torch.save, zstd-3)", "bytes_per_token": total / (n * t),
            "encode_tokens_per_cpu_s": n * t / cpu, "verify": "",
            **fidelity(ids, probs, np.concatenate(decoded_ids), np.concatenate(decoded_probs))}


def equal_fidelity(rows: list[dict], kl: float, bytes_per_token: float) -> dict | None:
    """The smallest logitcache setting whose mean KL is at most `kl`, and its bytes against `bytes_per_token`."""
    ours = [r for r in rows if r["format"].startswith("logitcache") and r["ids_exact"] and r["mean_kl"] <= kl]
    if not ours:
        return None
    best = min(ours, key=lambda r: r["bytes_per_token"])
    return {"setting": best["format"], "bytes_per_token": best["bytes_per_token"], "mean_kl": best["mean_kl"],
            "theirs_bytes_per_token": bytes_per_token, "theirs_mean_kl": kl,
            "ratio": best["bytes_per_token"] / bytes_per_token}


def main() -> None:
    from logitcache.data.prepared import load_data
    from targets import teacher_targets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, action="append", required=True)
    parser.add_argument("--chunks", type=int, default=0, help="dev chunks (0: the whole dev split)")
    parser.add_argument("--temperatures", default="1,2")
    parser.add_argument("--k", default="32,50,128")
    parser.add_argument("--codes", default=",".join(CODES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab_size = load_data(args.data).vocab_size
    ks = [int(k) for k in args.k.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_formats_"))
    results: dict[tuple[float, int], list[dict]] = {}
    try:
        for temperature in (float(t) for t in args.temperatures.split(",")):
            tokens, all_ids, all_probs = teacher_targets(args.data, args.teacher, "dev", temperature, max(128, *ks),
                                                         args.chunks)
            for k in ks:
                ids, probs = np.ascontiguousarray(all_ids[..., :k]), np.ascontiguousarray(all_probs[..., :k])
                rows = [megatron_format(ids, probs)]
                rows += [logitcache_format(tokens, ids, probs, code, vocab_size, tmp) for code in args.codes.split(",")]
                results[(temperature, k)] = rows
            table = []
            for k in ks:
                for r in results[(temperature, k)]:
                    table.append([k, r["format"], r["bytes_per_token"], r["max_abs_dp"], "yes" if r["ids_exact"] else "NO",
                                  f"{r['mean_kl']:.2e}", r["decoded_zeros"], r["encode_tokens_per_cpu_s"], r["verify"]])
                for dk, dt, dbytes, dkl, source in DISTILLKIT:
                    if dk == k and dt in (None, temperature):
                        table.append([k, f"DistillKit ({source})", dbytes, "", "", "" if dkl is None else f"{dkl:.1e}",
                                      "", "", ""])
            n_tokens = tokens.shape[0] * tokens.shape[1]
            print_table(f"T = {temperature:g}: top-k targets of the demo teachers, dev split ({tokens.shape[0]} chunks, "
                        f"{n_tokens} tokens, vocab {vocab_size}); bytes of ids + probabilities per token",
                        ["k", "format", "bytes/token", "max |dp|", "ids exact", "mean KL (nats)", "zeros",
                         "encode tokens/CPU-s", "verify"], table)
        summary = {}
        if (2.0, 32) in results:
            rows = results[(2.0, 32)]
            megatron = rows[0]
            dk = next(d for d in DISTILLKIT if d[0] == 32)
            summary = {"vs_megatron": equal_fidelity(rows, megatron["mean_kl"], megatron["bytes_per_token"]),
                       "vs_distillkit_recommended": equal_fidelity(rows, dk[3], dk[2]),
                       "kl_5e-5": equal_fidelity(rows, 5e-5, 45.0), "kl_1e-6": equal_fidelity(rows, 1e-6, 47.0),
                       "default_sqrt_u7": next(r for r in rows if r["format"] == "logitcache sqrt-u7")}
        emit_json({"bench": "formats", "T2_k32": summary,
                   "rows": [{"temperature": t, "k": k, **r} for (t, k), rs in results.items() for r in rs]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
