"""The Ray engine's cost against the single-process dump, on the demo-sized teachers, as whole processes.

    python benchmarks/bench_ray.py [--chunks 192] [--block-rows 16] [--repeats 2]

Random-init llama-small and gpt2-small teachers (the demo's presets; throughput does not depend on the
weights) over random chunks of a 16k vocabulary (common.synthetic_data). Arms, each a fresh process,
alternating over the repeats: `local` (dump in this process), `ray1` (--engine ray, 1 worker) and `ray2`
(2 workers of 1 CPU each), each Ray arm starting its own local cluster as `dump --engine ray` does
without --ray-address. Measured per run: the whole process's wall time (what a user waits for: imports,
Ray's start, the workers loading the teachers) and the block loop (local: the dump's own loop; Ray: the
first block's start to the last block's commit, from the workers' $LOGITCACHE_RAY_EVENTS). The per-block
overhead of the Ray path is (ray1 loop - local loop) / blocks. Medians are quoted; prints a table, then
one JSON line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from logitcache.runtime.process import tune_process  # noqa: E402

tune_process()  # before torch is imported, as the CLI does (the Ray workers get the same in their runtime env)

import argparse  # noqa: E402
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json, median, print_table, synthetic_data  # noqa: E402

from logitcache.config import RayConfig  # noqa: E402

ARMS = {"local": {"engine": "local"}, "ray1": {"engine": "ray", "ray": RayConfig(workers="1", cpus_per_worker=2.0)},
        "ray2": {"engine": "ray", "ray": RayConfig(workers="2", cpus_per_worker=1.0)}}
PRESETS = ("llama-small", "gpt2-small")


def build_inputs(work: Path, chunks: int, vocab_size: int) -> tuple[Path, list[Path]]:
    from logitcache.data.prepared import load_data
    from logitcache.teachers.models import build_model, get_preset

    data = synthetic_data(work / "data", vocab_size, chunks)
    teachers = []
    for preset in PRESETS:
        build_model(get_preset(preset), load_data(data).vocab_size).save_pretrained(str(work / preset))
        shutil.copy(data / "tokenizer.json", work / preset / "tokenizer.json")
        teachers.append(work / preset)
    return data, teachers


def run_arm(arm: str, work: Path, args) -> dict:
    """Inside the arm's process: one dump; its block loop in seconds."""
    import torch

    from logitcache.dump import DumpConfig, dump

    torch.set_num_threads(args.threads)
    out, events = work / f"{arm}.zarr", work / f"{arm}.events"
    shutil.rmtree(out, ignore_errors=True)
    events.unlink(missing_ok=True)
    os.environ["LOGITCACHE_RAY_EVENTS"] = str(events)
    config = DumpConfig(data=work / "data", teachers=tuple(work / p for p in PRESETS), out=str(out), top_k=32,
                        batch_size=16, block_rows=args.block_rows, max_chunks=args.chunks, row_selection="first",
                        device="cpu", **ARMS[arm])
    report = dump(config)
    if arm == "local":
        loop_s = report.seconds
    else:
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        loop_s = max(e["t"] for e in lines if e["event"] == "commit") - min(e["t"] for e in lines if e["event"] == "start")
    return {"loop_s": loop_s, "blocks": report.blocks_written,
            "pids": len(getattr(report, "worker_pids", [])) or 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=192)
    parser.add_argument("--block-rows", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS), help="the arms to run (local and ray1 are needed)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.work, args)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        build_inputs(work, args.chunks, args.vocab_size)
        arms = [arm for arm in ARMS if arm in args.arms.split(",")]
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        options = [f"--chunks={args.chunks}", f"--block-rows={args.block_rows}", f"--vocab-size={args.vocab_size}",
                   f"--threads={args.threads}"]
        for _ in range(args.repeats):
            for arm in arms:
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, *options, "--arm", arm, "--work", str(work)],
                                      capture_output=True, text=True)
                wall_s = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
                results[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall_s": wall_s})
        report(results, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, list[dict]], args) -> None:
    wall = {arm: median([r["wall_s"] for r in runs]) for arm, runs in results.items()}
    loop = {arm: median([r["loop_s"] for r in runs]) for arm, runs in results.items()}
    blocks = results["local"][0]["blocks"]
    overhead_ms = (loop["ray1"] - loop["local"]) / blocks * 1000
    fixed = {arm: wall[arm] - loop[arm] for arm in wall}  # start-up: imports, Ray, loading the teachers
    per_block = {arm: loop[arm] / blocks for arm in loop}
    # blocks of this size at which local / ray1 (whole process) reaches 0.85: F_l + n b_l >= 0.85 (F_r + n b_r)
    gain = per_block["local"] - 0.85 * per_block["ray1"]
    blocks_for_085 = max(0.0, (0.85 * fixed["ray1"] - fixed["local"]) / gain) if gain > 0 else None
    print_table(f"dump: local vs --engine ray ({' + '.join(PRESETS)}, {args.chunks} chunks of 128 in {blocks} blocks "
                f"of {args.block_rows}, cpu x{args.threads}; medians of {args.repeats})",
                ["arm", "whole process s", "block loop s", "loop ms/block", "local/arm (whole process)", "runs wall s"],
                [[arm, wall[arm], loop[arm], loop[arm] / blocks * 1000, wall["local"] / wall[arm],
                  " ".join(f"{r['wall_s']:.1f}" for r in results[arm])] for arm in results])
    print(f"start-up s: {', '.join(f'{arm} {fixed[arm]:.1f}' for arm in fixed)}; local/ray1 reaches 0.85 at "
          f"{'never' if blocks_for_085 is None else f'{blocks_for_085:.0f} blocks'} of {args.block_rows} rows")
    emit_json({"bench": "ray-dump", "blocks": blocks, "block_rows": args.block_rows, "chunks": args.chunks,
               "per_block_overhead_ms": overhead_ms, "ratio_local_over_ray1": wall["local"] / wall["ray1"],
               "ratio_local_over_ray2": wall["local"] / wall["ray2"] if "ray2" in wall else None,
               "loop_ratio_local_over_ray1": loop["local"] / loop["ray1"], "wall_s": wall, "loop_s": loop,
               "startup_s": fixed, "blocks_for_ratio_085": blocks_for_085,
               "threads": args.threads, "repeats": args.repeats})


if __name__ == "__main__":
    main()
