"""Quality at demo scale, 3 seeds: students on the data's tokenizer trained (a) CE only, (b) from the demo's LLaMA
teacher alone, (c) from the demo's same-tokenizer ensemble (LLaMA + GPT-2, configs/demo.toml), (d) from the
LLaMA and a GPT-2 trained on a byte-level BPE of its own (configs/demo-mixed.toml).

Needs both runs first (each ~12-20 min on 2 cores):
  logitcache run --config demo --out work/demo
  logitcache run --config demo-mixed --out work/demo-mixed
(a) and (c) are work/demo's students, (d) work/demo-mixed's distilled ones (its LLaMA is byte-identical to
work/demo's: same config, same data, checked here). (b) is made here, in WORK/demo-llama: run's own stage
configs for the demo (logitcache.run.build_stage_configs) with the dump's teachers reduced to the LLaMA; each
student's seed is its arm (a)/(c) counterpart's. Then prints the table of dev and test CE per seed and one
JSON line.

  .venv/bin/python benchmarks/bench_mixed_quality.py [--work work]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def llama_alone(work: Path) -> Path:
    """Arm (b): dump with the demo's LLaMA alone, three distilled students, dev and test eval."""
    from logitcache.files import write_json_atomic
    from logitcache.dump import dump
    from logitcache.evaluate import evaluate
    from logitcache.run import load_run_config, build_stage_configs
    from logitcache.train_student import train_student

    demo, out = (work / "demo").resolve(), (work / "demo-llama").resolve()
    configs = build_stage_configs(load_run_config(Path("demo")), demo)
    llama = configs["teachers"]["llama"].out
    cache = out / "cache.zarr"
    if not (out / "dump.done").exists():
        dump(dataclasses.replace(configs["dump"], teachers=(llama,), out=cache), overwrite=True)
        (out / "dump.done").write_text("ok")
    students = []
    for (kind, seed), cfg in configs["students"].items():
        if kind != "distilled":
            continue
        target = out / "students" / f"distilled-seed{seed}"
        students.append(target)
        if not (target / "done").exists():
            train_student(dataclasses.replace(cfg, cache=cache, out=target), overwrite=True)
            (target / "done").write_text("ok")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    for split, ecfg in configs["eval"].items():
        if not (out / "eval" / f"{split}.json").exists():
            result = evaluate(dataclasses.replace(ecfg, models=tuple(students), teachers=(llama,) if split == "dev" else ()))
            write_json_atomic(out / "eval" / f"{split}.json", result)
    return out


def ce_by_model(work: Path, split: str) -> dict[str, float]:
    return {Path(m["path"]).name: m["ce"] for m in json.loads((work / "eval" / f"{split}.json").read_text())["models"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("work"))
    args = parser.parse_args()
    work = args.work
    for run in ("demo", "demo-mixed"):
        if not (work / run / "eval" / "test.json").exists():
            sys.exit(f"{work / run} has no eval: run `logitcache run --config {run} --out {work / run}` first")
    same_llama = sha256(work / "demo/teachers/llama/model.safetensors") == \
        sha256(work / "demo-mixed/teachers/llama/model.safetensors")
    llama_alone(work)
    arms = {"a": ("CE only (alpha = 1)", work / "demo", "baseline"),
            "b": ("LLaMA alone", work / "demo-llama", "distilled"),
            "c": ("LLaMA + GPT-2, one tokenizer (demo)", work / "demo", "distilled"),
            "d": ("LLaMA + GPT-2 on a BPE of its own (demo-mixed)", work / "demo-mixed", "distilled")}
    table = {}
    for key, (name, run, kind) in arms.items():
        dev, test = ce_by_model(run, "dev"), ce_by_model(run, "test")
        table[key] = {"name": name, "dev_ce": [dev[f"{kind}-seed{s}"] for s in range(3)],
                      "test_ce": [test[f"{kind}-seed{s}"] for s in range(3)]}
    print("| arm | dev CE, seeds 0 / 1 / 2 | mean | test CE, seeds 0 / 1 / 2 | mean |")
    print("|---|---|---|---|---|")
    for key, row in table.items():
        cells = [f"({key}) {row['name']}"]
        for split in ("dev_ce", "test_ce"):
            cells += [" / ".join(f"{x:.4f}" for x in row[split]), f"{sum(row[split]) / 3:.4f}"]
        print("| " + " | ".join(cells) + " |")
    wins = {key: {split: sum(x < b for x, b in zip(table[key][split], table["a"][split])) for split in ("dev_ce", "test_ce")}
            for key in ("b", "c", "d")}
    print(json.dumps({"bench": "mixed_quality", "arms": table, "seeds_better_than_a": wins,
                      "same_llama_in_c_and_d": same_llama}))


if __name__ == "__main__":
    main()
