"""A cache in object storage against the same cache on local disk: train-student step time and dump
tokens/s, with a latency injected per request.

    python benchmarks/bench_remote.py [--delays 0,20,50] [--student llama-small] [--repeats 3]

A real S3 server (moto's, its own process) sits behind a proxy (its own process) that delays every
request by D ms. Each arm runs in its own process; arms alternate over --repeats rounds and medians
are quoted. Student step time is the steady state (steps after the first WARMUP, whose time includes
filling the shuffle buffer). Prints a table, then one JSON line.
"""
from __future__ import annotations

from logitcache.runtime.process import tune_process

tune_process()  # before torch is imported (logitcache/runtime/process.py)

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
from s3_server import CREDENTIALS, PIDS, cpu_seconds, make_bucket, serve  # noqa: E402

WARMUP = 4
BUCKET = "bench"


def steady_step_s(records: list[dict]) -> float:
    steps = [r for r in records if "elapsed_s" in r]
    first, last = steps[WARMUP - 1], steps[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])


def endpoints() -> dict[str, str]:
    return json.loads(os.environ["BENCH_ENDPOINTS"])  # {"0": proxy url, "20": ..., "direct": moto url}


def use_endpoint(where: str) -> None:
    """`s3@D` (s3fs) or `obstore@D`: the transport and the proxy adding D ms, or `direct` (no proxy)."""
    from logitcache.store.backends import set_default_options
    from logitcache.store.location import StorageOptions

    transport, _, delay = where.rpartition("@") if "@" in where else ("s3", "", where)
    set_default_options(StorageOptions(backend="obstore" if transport == "obstore" else "fsspec",
                                       settings={"endpoint_url": endpoints()[delay]}))


def place(where: str, work: Path, name: str) -> str:
    """`name` on local disk (under WORK) or in the bucket, through the arm's transport and proxy."""
    if where == "local":
        return str(work / name)
    use_endpoint(where)
    return f"s3://{BUCKET}/{name}"


def arm_student(where: str, work: Path, args) -> dict:
    from logitcache.train_student import StudentConfig, train_student
    from logitcache.training.loop import TrainConfig, read_metrics

    cache = place(where, work, "cache.zarr")
    out = work / f"student-{where.replace('@', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    train = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, warmup_steps=2, val_chunks=8, device="cpu")
    train_student(StudentConfig(cache=cache, data=str(work / "data"), out=out, preset=args.student,
                                shuffle_buffer=args.shuffle_buffer, train=train))
    return {"step_s": steady_step_s(read_metrics(out))}


def arm_dump(where: str, work: Path, args) -> dict:
    from logitcache.dump import DumpConfig, dump

    out = place(where, work, f"dump-{where.replace('@', '-')}.zarr")
    teachers = tuple(sorted((work / "teachers").iterdir()))
    report = dump(DumpConfig(data=str(work / "data"), teachers=teachers, out=out, block_rows=args.block_rows,
                             max_chunks=args.dump_chunks, device="cpu"), overwrite=True)
    return {"tokens_per_s": report.tokens_per_s}


def transport_store(transport: str, endpoint: str):
    """The cache's Zarr store through fsspec/s3fs (what logitcache uses) or obstore (zarr's ObjectStore)."""
    if transport == "fsspec":
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(f"s3://{BUCKET}/cache.zarr", read_only=True,
                                    storage_options={"endpoint_url": endpoint, "use_listings_cache": False})
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    return ObjectStore(S3Store(BUCKET, prefix="cache.zarr", endpoint=endpoint, region=CREDENTIALS["AWS_DEFAULT_REGION"],
                               access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                               client_options={"allow_http": True}), read_only=True)


def arm_read(where: str, work: Path, args) -> dict:
    """Every block of the cache (its three arrays fetched together, `args.read_ahead` blocks in flight),
    through one transport: MB/s of stored (compressed) bytes."""
    import asyncio
    import time

    import zarr
    from zarr.core.sync import sync

    from logitcache.store.fetch import read_ahead

    transport, delay = where.split("@")
    group = zarr.open_group(store=transport_store(transport, endpoints()[delay]), mode="r")
    arrays = [group[name] for name in ("tokens", "topk_ids", "topk_probs")]
    rows, block_rows = arrays[0].shape[0], arrays[0].chunks[0]

    def fetch(block: int):
        selection = slice(block * block_rows, min((block + 1) * block_rows, rows))

        async def gather():
            return await asyncio.gather(*(a._async_array.getitem(selection) for a in arrays))

        return sync(gather())

    blocks = range((rows + block_rows - 1) // block_rows)
    t0 = time.perf_counter()
    for _, result in read_ahead(fetch, blocks, ahead=args.read_ahead, workers=args.read_ahead):
        if isinstance(result, Exception):
            raise result
    seconds = time.perf_counter() - t0
    stored = sum(p.stat().st_size for p in (work / "cache.zarr").rglob("*") if p.is_file())
    return {"mb_per_s": stored / 1e6 / seconds, "blocks_per_s": len(blocks) / seconds}


def run_arm(arm: str, work: Path, args) -> dict:
    """One arm; also the CPU seconds the S3 server and proxies spent meanwhile (they share this machine's
    cores with the arm, which a real object store would not)."""
    import time

    torch.set_num_threads(args.threads)
    kind, where = arm.split(":")
    run = {"student": arm_student, "dump": arm_dump, "read": arm_read}[kind]
    pids = json.loads(os.environ["BENCH_SERVER_PIDS"])
    before, t0 = sum(map(cpu_seconds, pids)), time.perf_counter()
    result = run(where, work, args)
    server_cpu_s, wall_s = sum(map(cpu_seconds, pids)) - before, time.perf_counter() - t0
    return {"arm": arm, **result, "server_cpu_share": server_cpu_s / wall_s}


def setup(work: Path, args) -> None:
    from logitcache.dump import DumpConfig, dump
    from logitcache.store.copy import copy_cache
    from logitcache.train_teacher import TeacherConfig, train_teacher
    from logitcache.training.loop import TrainConfig

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
    parser.add_argument("--dump-chunks", type=int, default=4096, help="Enough that one-off costs (client set-up, "
                        "the last blocks in flight) do not dominate.")
    parser.add_argument("--dump-delays", default="0,20", help="Latencies for the dump arms (ms).")
    parser.add_argument("--read-delays", default="0,20", help="Latencies for the transport arms (ms): fsspec vs obstore.")
    parser.add_argument("--read-ahead", type=int, default=8, help="Blocks in flight in the transport arms.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_or_run_arm(parser, run_arm)
    if args is None:
        return
    os.environ.update(CREDENTIALS)
    delays = [d.strip() for d in args.delays.split(",") if d.strip()]
    dump_delays = [d.strip() for d in args.dump_delays.split(",") if d.strip()]
    read_delays = [d.strip() for d in args.read_delays.split(",") if d.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        with serve("moto") as moto:
            make_bucket(moto, BUCKET)
            proxies = {}
            stack = []
            for delay in sorted(set(delays + dump_delays + read_delays)):
                context = serve("proxy", upstream=moto, delay_ms=delay)
                proxies[delay] = context.__enter__()
                stack.append(context)
            try:
                os.environ["BENCH_ENDPOINTS"] = json.dumps({**proxies, "direct": moto})
                os.environ["BENCH_SERVER_PIDS"] = json.dumps([PIDS[moto]] + [PIDS[url] for url in proxies.values()])
                setup(work, args)
                arms = ["student:local"] + [f"student:{t}@{d}" for d in delays for t in ("s3", "obstore")]
                arms += ["dump:local"] + [f"dump:{t}@{d}" for d in dump_delays for t in ("s3", "obstore")]
                arms += [f"read:{t}@{d}" for d in read_delays for t in ("fsspec", "obstore")]
                results = run_arms_interleaved(__file__, arms, args, work)
            finally:
                for context in reversed(stack):
                    context.__exit__(None, None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(arm: str, key: str) -> float:
        return median([r[key] for r in results[arm]])

    local_step, local_dump = med("student:local", "step_s"), med("dump:local", "tokens_per_s")
    payload = {"student": args.student, "batch_size": args.batch_size, "block_rows": args.block_rows,
               "repeats": args.repeats, "student_local_step_ms": 1000 * local_step, "dump_local_tokens_per_s": local_dump}
    rows = [["train-student step ms", "local disk", 1000 * local_step, 1.0, med("student:local", "server_cpu_share")]]
    for d in delays:
        for t, name in (("s3", "s3fs"), ("obstore", "obstore")):
            step = med(f"student:{t}@{d}", "step_s")
            rows.append(["train-student step ms", f"S3 + {d} ms ({name})", 1000 * step, step / local_step,
                         med(f"student:{t}@{d}", "server_cpu_share")])
            payload[f"student_remote_vs_local_step_time_{d}ms" + ("_obstore" if t == "obstore" else "")] = step / local_step
    rows.append(["dump tokens/s", "local disk", local_dump, 1.0, med("dump:local", "server_cpu_share")])
    for d in dump_delays:
        for t, name in (("s3", "s3fs"), ("obstore", "obstore")):
            rate = med(f"dump:{t}@{d}", "tokens_per_s")
            rows.append(["dump tokens/s", f"S3 + {d} ms ({name})", rate, rate / local_dump,
                         med(f"dump:{t}@{d}", "server_cpu_share")])
            payload[f"dump_remote_vs_local_tokens_per_s_{d}ms" + ("_obstore" if t == "obstore" else "")] = rate / local_dump
    for d in read_delays:
        rates = {t: med(f"read:{t}@{d}", "mb_per_s") for t in ("fsspec", "obstore")}
        for t in ("fsspec", "obstore"):
            rows.append([f"read blocks MB/s ({t})", f"S3 + {d} ms", rates[t], rates[t] / rates["fsspec"],
                         med(f"read:{t}@{d}", "server_cpu_share")])
        payload[f"obstore_vs_fsspec_read_{d}ms"] = rates["obstore"] / rates["fsspec"]
    print_table(f"cache in S3 (moto + delaying proxy, same machine) vs local disk, medians of {args.repeats}",
                ["measure", "where", "value", "ratio (to local; to fsspec)", "server CPU (cores)"], rows)
    emit_json(payload)


if __name__ == "__main__":
    main()
