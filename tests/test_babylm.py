"""configs/babylm-paper.toml on a folder in the BabyLM 2023 layout (slow): babylm_10M/, babylm_dev/,
babylm_test/, files named like the ten sources, text from the demo corpus; `run --data DIR` with
`--set` overrides for tiny presets and a few steps."""
import json

import pytest
from typer.testing import CliRunner

from logitcache_cli.app import app

pytestmark = pytest.mark.slow
SOURCES = ("aochildes", "bnc_spoken", "cbt", "children_stories", "gutenberg", "open_subtitles", "qed",
           "simple_wikipedia", "switchboard", "wikipedia")
TINY = ["teachers.gpt2.preset=gpt2-tiny", "teachers.llama.preset=llama-tiny", "student.preset=llama-tiny",
        "data.vocab_size=1000", "dump.batch_size=16", "dump.block_rows=64", "dump.max_chunks=256",
        "eval.max_chunks=32", "eval.batch_size=16"]
for stage in ("teachers.gpt2.train", "teachers.llama.train", "student.train"):
    TINY += [f"{stage}.max_steps=6", f"{stage}.batch_size=8", f"{stage}.warmup_steps=2", f"{stage}.val_chunks=32",
             f"{stage}.lr=0.003", f"{stage}.device=\"cpu\""]


def babylm_folder(root, demo):
    """Ten source files per split, each a slice of the demo corpus's lines of that split."""
    for split, folder in (("train", "babylm_10M"), ("dev", "babylm_dev"), ("test", "babylm_test")):
        lines = [line for path in sorted(demo.glob(f"*.{split}")) for line in path.read_text().splitlines() if line.strip()]
        lines = lines[: 3000 if split == "train" else 600]
        (root / folder).mkdir(parents=True)
        for i, source in enumerate(SOURCES):
            (root / folder / f"{source}.{split}").write_text("\n".join(lines[i::len(SOURCES)]) + "\n")
    return root


def test_paper_config_runs_on_the_babylm_layout(tmp_path):
    from pathlib import Path

    from logitcache.data.corpus import build_demo_corpus

    demo = tmp_path / "demo"
    build_demo_corpus(demo)
    data = babylm_folder(tmp_path / "babylm_data", demo)
    config = Path(__file__).resolve().parents[1] / "configs" / "babylm-paper.toml"
    args = ["run", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "work")]
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    prepared = json.loads((tmp_path / "work" / "data" / "prepare_report.json").read_text())
    assert sorted(prepared["sources"]) == sorted(SOURCES)  # every source, each with its cleaner
    assert prepared["splits"]["dev"]["chunks"] > 0 and prepared["splits"]["test"]["chunks"] > 0
    report = json.loads((tmp_path / "work" / "report.json").read_text())
    assert {t["name"] for t in report["teachers"]} == {"gpt2", "llama"}
    metrics = [json.loads(line) for line in (tmp_path / "work" / "students" / "distilled-seed0" / "metrics.jsonl")
               .read_text().splitlines()]
    vals = [m["val_ce"] for m in metrics if "val_ce" in m]
    assert vals and all(v > 1.0 for v in vals)  # validation really read dev text (before: 0.0)
