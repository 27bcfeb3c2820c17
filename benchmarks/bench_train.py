"""Training throughput and peak memory: the shared loop against a bare forward+backward loop, and
distillation from the cache against plain CE training and online distillation (teachers in memory).

    python benchmarks/bench_train.py [--presets llama-small,gpt2-small] [--student llama-student-small]

Each arm runs in its own process (so peak RSS is its own), arms alternate over --repeats rounds,
and medians are quoted. Tokens/s counts steps after the first two (warm-up). Prints a table, then
one JSON line.
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

from common import emit_json, median, peak_rss_mb, parse_or_run_arm, print_table, run_arms_interleaved, synthetic_data  # noqa: E402

WARMUP = 2


def steady_tokens_per_s(records: list[dict], tokens_per_step: int) -> float:
    steps = [r for r in records if "elapsed_s" in r]
    first, last = steps[WARMUP - 1], steps[-1]
    return (last["step"] - first["step"]) * tokens_per_step / (last["elapsed_s"] - first["elapsed_s"])


def arm_bare(preset: str, work: Path, args) -> float:
    """The reference: model forward, CE, backward, AdamW step, and nothing else."""
    from logitcache.data.prepared import load_data
    from logitcache.teachers.models import build_model, get_preset
    from logitcache.training.loop import make_optimizer, next_token_ce, TrainConfig

    data = load_data(work / "data")
    rows = data.store.split("train")
    model = build_model(get_preset(preset), data.vocab_size)
    optimizer = make_optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    times = []
    for step in range(args.steps):
        ids = torch.from_numpy(rows[rng.choice(rows.shape[0], args.batch_size, replace=False)].astype(np.int64))
        t0 = time.perf_counter()
        loss = next_token_ce(model(input_ids=ids).logits, ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return args.batch_size * 128 * (args.steps - WARMUP) / sum(times[WARMUP:])


def arm_fit(kind: str, preset: str, work: Path, args) -> float:
    from logitcache.train_student import StudentConfig, train_student
    from logitcache.train_teacher import TeacherConfig, train_teacher
    from logitcache.training.loop import TrainConfig, read_metrics

    out = work / f"out-{kind}-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    train = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=2, val_chunks=8, device="cpu")
    if kind == "loop":
        from logitcache.teachers.models import get_preset

        train_teacher(TeacherConfig(data=work / "data", out=out, arch=get_preset(preset).arch, preset=preset, train=train))
    else:
        alpha = 1.0 if kind == "student-ce" else 0.5
        online = tuple(sorted((work / "teachers").iterdir())) if kind == "student-online" else ()
        train_student(StudentConfig(cache=work / "cache.zarr", data=work / "data", out=out, preset=preset, alpha=alpha,
                                    online_teachers=online, train=train))
    return steady_tokens_per_s(read_metrics(out), args.batch_size * 128)


def run_arm(arm: str, work: Path, args) -> dict:

    torch.set_num_threads(args.threads)
    kind, preset = arm.split(":")
    tokens_per_s = arm_bare(preset, work, args) if kind == "bare" else arm_fit(kind, preset, work, args)
    peak_mb = peak_rss_mb()
    return {"arm": arm, "tokens_per_s": tokens_per_s, "peak_rss_mb": peak_mb}


def setup(work: Path, args) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.teachers.models import build_model, get_preset

    synthetic_data(work / "data", args.vocab_size, args.chunks)
    teachers = []
    for preset in args.teachers.split(","):
        build_model(get_preset(preset), args.vocab_size).save_pretrained(str(work / "teachers" / preset))
        shutil.copy(work / "data" / "tokenizer.json", work / "teachers" / preset / "tokenizer.json")
        teachers.append(work / "teachers" / preset)
    dump(DumpConfig(data=work / "data", teachers=tuple(teachers), out=work / "cache.zarr", top_k=32, block_rows=64,
                    temperature=args.temperature, device="cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", default="llama-small,gpt2-small")
    parser.add_argument("--student", default="llama-student-small")
    parser.add_argument("--teachers", default="llama-small,gpt2-small", help="random-init teachers for the cache/online arms")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=2.0, help="T of the cache (and of the online teachers)")
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        setup(work, args)
        presets = [p for p in args.presets.split(",") if p]
        arms = [f"{kind}:{p}" for p in presets for kind in ("bare", "loop")]
        arms += [f"{kind}:{args.student}" for kind in ("bare", "student-ce", "student-kd", "student-online")]
        results = run_arms_interleaved(__file__, arms, args, work)
        summary = {arm: {"tokens_per_s": median([r["tokens_per_s"] for r in rs]),
                         "peak_rss_mb": median([r["peak_rss_mb"] for r in rs])} for arm, rs in results.items()}
        rows = []
        for arm, s in summary.items():
            kind, preset = arm.split(":")
            bare = summary[f"bare:{preset}"]
            rows.append([arm, s["tokens_per_s"], s["tokens_per_s"] / bare["tokens_per_s"], s["peak_rss_mb"]])
        print_table(f"training throughput, vocab {args.vocab_size}, batch {args.batch_size}x128, {args.threads} threads "
                    f"(medians of {args.repeats})", ["arm", "tokens/s", "vs bare fwd+bwd", "peak RSS MB"], rows)
        student = {k: summary[f"{k}:{args.student}"] for k in ("student-ce", "student-kd", "student-online")}
        emit_json({"bench": "train", "arms": summary,
                   "loop_vs_bare": {p: summary[f"loop:{p}"]["tokens_per_s"] / summary[f"bare:{p}"]["tokens_per_s"]
                                    for p in presets},
                   "kd_cache_vs_ce": student["student-kd"]["tokens_per_s"] / student["student-ce"]["tokens_per_s"],
                   "peak_rss_mb_kd_cache_vs_ce": student["student-kd"]["peak_rss_mb"] / student["student-ce"]["peak_rss_mb"],
                   "kd_cache_vs_online": student["student-kd"]["tokens_per_s"] / student["student-online"]["tokens_per_s"],
                   "peak_rss_mb_kd_cache_vs_online": student["student-kd"]["peak_rss_mb"] / student["student-online"]["peak_rss_mb"]})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
