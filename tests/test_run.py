"""`run` end to end on a tiny corpus with tiny presets; the shipped configs parse and build."""
import json
from pathlib import Path

import pytest

from logitcache.configs import to_dict
from logitcache.dump import DumpConfig
from logitcache.models import count_params, get_preset
from logitcache.run import load_run_config, run_pipeline
from logitcache.student import StudentConfig
from logitcache.teacher import TeacherConfig

REPO = Path(__file__).resolve().parents[1]

TINY = """
[data]
raw_dir = "{raw}"
vocab_size = 300
seq_len = 32

[[teachers]]
name = "llama"
arch = "llama"
preset = "llama-tiny"
[teachers.train]
lr = 3e-3
batch_size = 8
max_steps = 10
warmup_steps = 2
val_chunks = 16
device = "cpu"

[[teachers]]
name = "gpt2"
arch = "gpt2"
preset = "gpt2-tiny"
[teachers.train]
lr = 3e-3
batch_size = 8
max_steps = 10
warmup_steps = 2
val_chunks = 16
device = "cpu"

[dump]
top_k = 8
temperature = 1.0
block_rows = 8
max_chunks = 32

[student]
preset = "llama-tiny"
alpha = 0.5
seeds = [0, 1]
[student.train]
lr = 3e-3
batch_size = 8
max_steps = 6
warmup_steps = 2
val_chunks = 16
device = "cpu"

[eval]
max_chunks = 16
blimp = "{blimp}"
blimp_max_pairs = 5
"""


def test_run_end_to_end_and_rerun_skips(tmp_path, tiny_raw, monkeypatch):
    from test_eval import blimp_dir

    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY.format(raw=tiny_raw, blimp=blimp_dir(tmp_path)))
    work = tmp_path / "work"
    report = run_pipeline(load_run_config(config_path), work)
    saved = json.loads((work / "report.json").read_text())
    assert saved["teachers"][0]["name"] == "llama" and {"path", "params", "dev_ce", "test_ce"} <= set(saved["teachers"][0])
    for kind in ("distilled", "baseline"):
        assert {"path", "params", "dev_ce", "test_ce", "blimp"} <= set(saved["students"][kind])
        assert len(saved["students"][kind]["seeds"]) == 2
    assert {"path", "bytes_per_token", "bytes_on_disk", "full_logit_bytes"} <= set(saved["cache"])
    assert set(saved["stages"]) >= {"prepare", "teacher:llama", "teacher:gpt2", "dump", "eval"}
    markdown = (work / "report.md").read_text()
    assert "student, distilled from the cache" in markdown and "![student_curves]" in markdown
    assert (work / "student_curves.png").stat().st_size > 10_000
    assert json.loads((work / "config.json").read_text())["dump"]["top_k"] == 8
    # a second run finds every stage complete: nothing is retrained or rewritten
    weights = work / "teachers" / "llama" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    cache_mtime = (work / "cache.zarr" / "topk_ids" / "c" / "0" / "0" / "0").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)  # the same WORK given as a relative path is the same WORK
    again = run_pipeline(load_run_config(config_path), Path("work"))
    assert weights.stat().st_mtime_ns == mtime
    assert (work / "cache.zarr" / "topk_ids" / "c" / "0" / "0" / "0").stat().st_mtime_ns == cache_mtime
    assert again["students"]["distilled"]["dev_ce"] == report["students"]["distilled"]["dev_ce"]
    # --force redoes one stage
    run_pipeline(load_run_config(config_path), work, force=("teacher:llama",))
    assert weights.stat().st_mtime_ns != mtime


def test_demo_config_is_the_default_and_builds():
    config = load_run_config(None)
    assert config.data.raw_dir == "" and len(config.teachers) == 2


def test_paper_config_parses_and_builds_every_stage():
    config = load_run_config(REPO / "configs" / "babylm-paper.toml")
    work = Path("/tmp/paper-work")
    expected = {"gpt2": 705e6, "llama": 360e6}
    for section in config.teachers:
        TeacherConfig(data=work / "data", out=work / section.name, arch=section.arch, preset=section.preset,
                      train=section.train)
        params = count_params(get_preset(section.preset), config.data.vocab_size)
        assert abs(params - expected[section.name]) / expected[section.name] < 0.02
    d = config.dump
    DumpConfig(data=work / "data", teachers=(work / "gpt2", work / "llama"), out=work / "cache.zarr", top_k=d.top_k,
               temperature=d.temperature, combine=d.combine, prob_dtype=d.prob_dtype)
    StudentConfig(cache=work / "cache.zarr", data=work / "data", out=work / "s", preset=config.student.preset,
                  alpha=config.student.alpha, kl_reduction=config.student.kl_reduction, train=config.student.train)
    assert abs(count_params(get_preset(config.student.preset), 16000) - 58e6) / 58e6 < 0.02
    assert config.dump.temperature == 2.0 and config.student.alpha == 0.5 and config.student.train.epochs == 6
    assert to_dict(config)["data"]["vocab_size"] == 16000
