"""This checkout against another one (e.g. a release, or the commit a refactor started from), in one run:
the dump as a whole process and the student's step, each version through its own CLI and venv.

    python benchmarks/bench_versions.py --other ../base [--chunks 512] [--steps 30] [--repeats 3]

OTHER is a checkout with its own `.venv` (made by its `make`). The data dir and the random-init teachers
are made once, by this checkout, and read by both versions. Arms alternate (this, other, this, other, ...)
and medians are quoted:
- dump: wall seconds of `logitcache dump` (start-up included) over CHUNKS chunks with two teachers;
- student: the train-student's steady tokens/s over STEPS steps on each version's own cache, read from
  its metrics.jsonl (steps after the first two). This checkout runs it twice: with its default loss and
  with `--loss-chunk-tokens 0` (the full logits, as OTHER computes them) when it has that setting.
Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import emit_json, median, print_table, synthetic_data

HERE = Path(__file__).resolve().parents[1]


def make_teachers(out: Path, vocab_size: int) -> list[Path]:
    """Two random-init teachers (the demo's presets) saved as Hugging Face folders."""
    from logitcache.teachers.models import build_model
    from logitcache.teachers.presets import get_preset

    dirs = []
    for preset in ("llama-tiny", "gpt2-tiny"):
        model = build_model(get_preset(preset), vocab_size)
        model.save_pretrained(out / preset)
        shutil.copy(out.parent / "data" / "tokenizer.json", out / preset / "tokenizer.json")
        dirs.append(out / preset)
    return dirs


def cli(root: Path) -> str:
    return str(root / ".venv" / "bin" / "logitcache")


def run_dump(root: Path, data: Path, teachers: list[Path], out: Path, chunks: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = [cli(root), "dump", "--data", str(data), "--out", str(out), "--max-chunks", str(chunks), "--device", "cpu"]
    for teacher in teachers:
        args += ["--teacher", str(teacher)]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, cwd=root)
    return time.perf_counter() - t0


def run_student(root: Path, data: Path, cache: Path, out: Path, steps: int, batch_size: int, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = [cli(root), "train-student", "--cache", str(cache), "--data", str(data), "--out", str(out),
            "--preset", "llama-student-small", "--max-steps", str(steps), "--batch-size", str(batch_size),
            "--device", "cpu", "--eval-every", "0", "--checkpoint-every", "0", *extra]
    subprocess.run(args, check=True, capture_output=True, cwd=root)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "elapsed_s" in r and "step" in r]  # train records: elapsed since the loop began
    first, last = steps[1], steps[-1]  # from the end of step 2: start-up and the first steps' warm-up left out
    return batch_size * 128 * (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    other = args.other.resolve()
    has_chunk_setting = "loss_chunk_tokens" in (HERE / "logitcache" / "config.py").read_text()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = synthetic_data(tmp / "data", args.vocab_size, args.chunks)
        (tmp / "teachers").mkdir()
        teachers = make_teachers(tmp / "teachers", args.vocab_size)
        dump_s = {"this": [], "other": []}
        student = {"this": [], "this full logits": [], "other": []}
        for _ in range(args.repeats):
            for name, root in (("this", HERE), ("other", other)):
                dump_s[name].append(run_dump(root, data, teachers, tmp / f"cache-{name}.zarr", args.chunks))
            for name, root, extra in (("this", HERE, []), ("other", other, []),
                                      *((("this full logits", HERE, ["--loss-chunk-tokens", "0"]),)
                                        if has_chunk_setting else ())):
                cache = tmp / f"cache-{name.split()[0]}.zarr"
                student[name].append(run_student(root, data, cache, tmp / "student", args.steps, args.batch_size, extra))
    rows = [["dump (s, whole process)", *(f"{median(dump_s[k]):.2f}" for k in ("this", "other")), "",
             f"{median(dump_s['other']) / median(dump_s['this']):.3f}"]]
    rows.append(["student (tokens/s)", f"{median(student['this']):.0f}", f"{median(student['other']):.0f}",
                 f"{median(student['this full logits']):.0f}" if student["this full logits"] else "",
                 f"{median(student['this']) / median(student['other']):.3f}"])
    print_table(f"this checkout vs {other} (medians of {args.repeats}, cpu, {os.cpu_count()} cores)",
                ["arm", "this", "other", "this, full logits", "this / other speed"], rows)
    emit_json({"bench": "versions", "other": str(other), "chunks": args.chunks, "steps": args.steps,
               "dump_s_this": dump_s["this"], "dump_s_other": dump_s["other"],
               "dump_speed_this_vs_other": median(dump_s["other"]) / median(dump_s["this"]),
               "student_tokens_per_s_this": student["this"], "student_tokens_per_s_other": student["other"],
               "student_tokens_per_s_this_full_logits": student["this full logits"],
               "student_speed_this_vs_other": median(student["this"]) / median(student["other"]),
               "student_full_logits_vs_other": (median(student["this full logits"]) / median(student["other"])
                                                if student["this full logits"] else None)})


if __name__ == "__main__":
    main()
