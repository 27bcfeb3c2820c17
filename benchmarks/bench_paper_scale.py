"""The paper-scale claim, measured on CPU: GPT-2 705M and LLaMA 360M teachers, a LLaMA 58M student,
vocabulary 16,000, 128 tokens per chunk (random init: speed and memory do not depend on the weights).

    python benchmarks/bench_paper_scale.py [--steps 6] [--batch-size 4] [--chunks 32] [--repeats 1]

Arms, each in its own process (peak RSS is its own):
  student-ce      the student with CE only (alpha = 1), batches from the cache
  student-cache   distillation from the cache (alpha 0.5, T = 2, top-64 + tail): no teacher in memory
  student-online  the paper's code path: both teachers in memory, full-vocabulary targets every step
  forward         the teachers' bare forward over --chunks chunks (logits materialised, nothing else)
  dump            `dump` of the same chunks (compute + top-k + encode + write)
Step times are medians over the steps after the first two. Prints a table, then one JSON line with
cache_vs_online_speedup, cache_vs_ce_peak_memory, teacher_weights_gb, online_minus_cache_peak_memory_gb
and dump_vs_forward.
"""
from __future__ import annotations

from logitcache.runtime.process import tune_process

tune_process()  # before torch is imported (logitcache/runtime/process.py)

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import emit_json, median, peak_rss_mb, parse_or_run_arm, print_table, run_arms_interleaved, synthetic_data  # noqa: E402

TEACHERS = ("gpt2-705m", "llama-360m")
STUDENT = "llama-58m"
WARMUP = 2


def step_seconds(out: Path) -> float:
    from logitcache.training.loop import read_metrics

    steps = [r for r in read_metrics(out) if "elapsed_s" in r]
    times = np.diff([0.0] + [r["elapsed_s"] for r in steps])[WARMUP:]
    return float(np.median(times))


def arm_student(kind: str, work: Path, args) -> dict:
    from logitcache.config import StudentConfig, TrainConfig
    from logitcache.train_student import train_student

    out = work / f"student-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    online = tuple(work / "teachers" / t for t in TEACHERS) if kind == "online" else ()
    train = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=1, val_chunks=4,
                        eval_every=10**6, device=args.device)
    train_student(StudentConfig(cache=work / "cache.zarr", data=work / "data", out=out, preset=STUDENT,
                                alpha=1.0 if kind == "ce" else 0.5, online_teachers=online, train=train))
    return {"step_s": step_seconds(out)}


def arm_forward(work: Path, args) -> dict:
    from logitcache.data.prepared import load_data
    from logitcache.teachers.models import load_model

    rows = load_data(work / "data").store.split("train")[: args.chunks]
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    models = [load_model(work / "teachers" / t).to(device) for t in TEACHERS]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0 = time.perf_counter()
    with torch.no_grad(), autocast:
        for start in range(0, rows.shape[0], args.dump_batch):
            ids = torch.from_numpy(rows[start:start + args.dump_batch].astype(np.int64)).to(device)
            for model in models:
                model(input_ids=ids).logits
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"tokens_per_s": rows.size / (time.perf_counter() - t0)}


def arm_dump(work: Path, args) -> dict:
    from logitcache.dump import dump
    from logitcache.config import DumpConfig

    out = work / "cache-bench.zarr"
    shutil.rmtree(out, ignore_errors=True)
    report = dump(DumpConfig(data=work / "data", teachers=tuple(work / "teachers" / t for t in TEACHERS), out=out,
                             top_k=64, temperature=2.0, batch_size=args.dump_batch, block_rows=args.dump_batch,
                             max_chunks=args.chunks, row_selection="first", device=args.device))
    shutil.rmtree(out, ignore_errors=True)
    return {"tokens_per_s": report.tokens_per_s}


def run_arm(arm: str, work: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    if arm.startswith("student-"):
        result = arm_student(arm.split("-", 1)[1], work, args)
    else:
        result = arm_forward(work, args) if arm == "forward" else arm_dump(work, args)
    peak = {"peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available() and args.device != "cpu":
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {"arm": arm, **result, **peak}


def setup(work: Path, args) -> float:
    """Data, the two teachers (saved), and the cache the student arms read. Returns the teachers' GB (fp32)."""
    from logitcache.dump import dump
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.config import DumpConfig

    synthetic_data(work / "data", 16000, max(args.chunks, args.batch_size * (args.steps + 1)))
    weights = 0
    for preset in TEACHERS:
        model = build_model(get_preset(preset), 16000)
        weights += sum(p.numel() for p in model.parameters()) * 4
        model.save_pretrained(str(work / "teachers" / preset))
        shutil.copy(work / "data" / "tokenizer.json", work / "teachers" / preset / "tokenizer.json")
        del model
    dump(DumpConfig(data=work / "data", teachers=tuple(work / "teachers" / t for t in TEACHERS), out=work / "cache.zarr",
                    top_k=64, temperature=2.0, batch_size=args.dump_batch, block_rows=args.dump_batch, device=args.device))
    return weights / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="student sequences per step")
    parser.add_argument("--chunks", type=int, default=32, help="chunks for the forward and dump arms")
    parser.add_argument("--dump-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or auto/cuda for the GPU check")
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return

    work = Path(tempfile.mkdtemp(prefix="bench_paper_"))
    try:
        teacher_gb = setup(work, args)
        arms = ["student-ce", "student-cache", "student-online", "forward", "dump"]
        results = run_arms_interleaved(__file__, arms, args, work)
        s = {arm: {k: median([r[k] for r in rs]) for k in rs[0] if k != "arm"} for arm, rs in results.items()}
        out = {
            "bench": "paper-scale",
            "cache_vs_online_speedup": s["student-online"]["step_s"] / s["student-cache"]["step_s"],
            "cache_vs_ce_peak_memory": s["student-cache"]["peak_rss_mb"] / s["student-ce"]["peak_rss_mb"],
            "teacher_weights_gb": teacher_gb,
            "online_minus_cache_peak_memory_gb": (s["student-online"]["peak_rss_mb"] - s["student-cache"]["peak_rss_mb"]) / 1024,
            "dump_vs_forward": s["dump"]["tokens_per_s"] / s["forward"]["tokens_per_s"],
            "cache_vs_ce_step_time": s["student-cache"]["step_s"] / s["student-ce"]["step_s"],
            "arms": s, "student_batch": args.batch_size, "steps": args.steps, "repeats": args.repeats,
            "threads": args.threads,
        }
        rows = [[arm, v.get("step_s", "-"), v.get("tokens_per_s", "-"), v["peak_rss_mb"]] for arm, v in s.items()]
        print_table(f"paper scale on CPU: teachers {' + '.join(TEACHERS)} ({teacher_gb:.2f} GB fp32), student {STUDENT}, "
                    f"vocab 16,000, student batch {args.batch_size}x128, {args.threads} threads (medians of {args.repeats})",
                    ["arm", "step s", "tokens/s", "peak RSS MB"], rows)
        print_table("goals", ["measure", "value", "goal"], [
            ["cache_vs_online_speedup", out["cache_vs_online_speedup"], ">= 5 (FLOP bound ~7)"],
            ["cache_vs_ce_peak_memory", out["cache_vs_ce_peak_memory"], "<= 1.1"],
            ["online_minus_cache_peak_memory_gb", out["online_minus_cache_peak_memory_gb"], f">= 0.9 x {teacher_gb:.2f}"],
            ["dump_vs_forward", out["dump_vs_forward"], ">= 0.9"]])
        emit_json(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
