"""A cache in object storage against the same cache on local disk: train-student step time and dump
tokens/s, with a latency injected per request.

    python benchmarks/bench_remote.py [--delays 0,20,50] [--student llama-small] [--repeats 3]

A real S3 server (moto's, its own process) sits behind a proxy (its own process) that delays every
request by D ms. Each arm runs in its own process; arms alternate over --repeats rounds and medians
are quoted. Student step time is the steady state (steps after the first WARMUP, whose time includes
filling the shuffle buffer). Prints a table, then one JSON line.
"""
from __future__ import annotations

from logitcache.memory import tune_heap

tune_heap()  # before torch is imported (logitcache/memory.py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from common import emit_json, median, parse_or_run_arm, print_table, run_arms_interleaved, synthetic_data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_server import CREDENTIALS, make_bucket, serve  # noqa: E402

WARMUP = 4
BUCKET = "bench"


def steady_step_s(records: list[dict]) -> float:
    steps = [r for r in records if "elapsed_s" in r]
    first, last = steps[WARMUP - 1], steps[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def endpoints() -> dict[str, str]:
    return json.loads(os.environ["BENCH_ENDPOINTS"])  # {"0": proxy url, "20": ..., "direct": moto url}


def use_endpoint(delay: str) -> None:
    from logitcache.store.location import set_storage_options

    set_storage_options({"endpoint_url": endpoints()[delay]})


def arm_student(where: str, work: Path, args) -> dict:
    from logitcache.student import StudentConfig, train_student
    from logitcache.train import TrainConfig, read_metrics

    if where == "local":
        cache = str(work / "cache.zarr")
    else:
        use_endpoint(where.split("@")[1])
        cache = f"s3://{BUCKET}/cache.zarr"
    out = work / f"student-{where.replace('@', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    train = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=2, val_chunks=8, device="cpu")
    train_student(StudentConfig(cache=cache, data=str(work / "data"), out=out, preset=args.student,
                                shuffle_buffer=args.shuffle_buffer, train=train))
    return {"step_s": steady_step_s(read_metrics(out))}


def arm_dump(where: str, work: Path, args) -> dict:
    from logitcache.dump import DumpConfig, dump

    if where == "local":
        out = str(work / "dump-local.zarr")
    else:
        use_endpoint(where.split("@")[1])
        out = f"s3://{BUCKET}/dump-{where.replace('@', '-')}.zarr"
    teachers = tuple(sorted((work / "teachers").iterdir()))
    report = dump(DumpConfig(data=str(work / "data"), teachers=teachers, out=out, block_rows=args.block_rows,
                             max_chunks=args.dump_chunks, device="cpu"), overwrite=True)
    return {"tokens_per_s": report.tokens_per_s}


def run_arm(arm: str, work: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    kind, where = arm.split(":")
    return {"arm": arm, **(arm_student(where, work, args) if kind == "student" else arm_dump(where, work, args))}


def setup(work: Path, args) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.store.copy import copy_cache
    from logitcache.teacher import TeacherConfig, train_teacher
    from logitcache.train import TrainConfig

    synthetic_data(work / "data", args.vocab, args.chunks)
    for arch in ("llama", "gpt2"):
        train_teacher(TeacherConfig(data=work / "data", out=work / "teachers" / arch, arch=arch, preset=f"{arch}-tiny",
                                    train=TrainConfig(batch_size=16, max_steps=20, warmup_steps=2, val_chunks=8,
                                                      device="cpu", lr=3e-3)))
    dump(DumpConfig(data=str(work / "data"), teachers=tuple(sorted((work / "teachers").iterdir())),
                    out=str(work / "cache.zarr"), block_rows=args.block_rows, device="cpu"))
    use_endpoint("direct")
    copy_cache(work / "cache.zarr", f"s3://{BUCKET}/cache.zarr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delays", default="0,20,50", help="Injected latency per request, ms (comma-separated).")
    parser.add_argument("--student", default="llama-small")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=4096, help="Rows of the cache the student streams.")
    parser.add_argument("--block-rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle-buffer", type=int, default=256, help="Small, so the student streams blocks "
                                                                         "throughout instead of buffering the cache.")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dump-chunks", type=int, default=1024)
    parser.add_argument("--dump-delays", default="0,20", help="Latencies for the dump arms (ms).")
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return
    os.environ.update(CREDENTIALS)
    delays = [d.strip() for d in args.delays.split(",") if d.strip()]
    dump_delays = [d.strip() for d in args.dump_delays.split(",") if d.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        with serve("moto") as moto:
            make_bucket(moto, BUCKET)
            proxies = {}
            stack = []
            for delay in sorted(set(delays + dump_delays)):
                context = serve("proxy", upstream=moto, delay_ms=delay)
                proxies[delay] = context.__enter__()
                stack.append(context)
            try:
                os.environ["BENCH_ENDPOINTS"] = json.dumps({**proxies, "direct": moto})
                setup(work, args)
                arms = ["student:local"] + [f"student:s3@{d}" for d in delays]
                arms += ["dump:local"] + [f"dump:s3@{d}" for d in dump_delays]
                results = run_arms_interleaved(__file__, arms, args, work)
            finally:
                for context in reversed(stack):
                    context.__exit__(None, None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    local_step = median([r["step_s"] for r in results["student:local"]])
    local_dump = median([r["tokens_per_s"] for r in results["dump:local"]])
    rows, payload = [], {"student": args.student, "batch_size": args.batch_size, "block_rows": args.block_rows,
                         "repeats": args.repeats}
    rows.append(["train-student", "local disk", 1000 * local_step, 1.0])
    for d in delays:
        step = median([r["step_s"] for r in results[f"student:s3@{d}"]])
        rows.append(["train-student", f"S3 + {d} ms", 1000 * step, step / local_step])
        payload[f"student_remote_vs_local_step_time_{d}ms"] = step / local_step
    rows.append(["dump", "local disk", local_dump, 1.0])
    for d in dump_delays:
        rate = median([r["tokens_per_s"] for r in results[f"dump:s3@{d}"]])
        rows.append(["dump", f"S3 + {d} ms", rate, rate / local_dump])
        payload[f"dump_remote_vs_local_tokens_per_s_{d}ms"] = rate / local_dump
    payload["student_local_step_ms"] = 1000 * local_step
    payload["dump_local_tokens_per_s"] = local_dump
    print_table(f"cache in S3 (moto + delaying proxy) vs local disk, medians of {args.repeats}",
                ["stage", "where", "step ms / tokens/s", "remote/local"], rows)
    emit_json(payload)


if __name__ == "__main__":
    main()
