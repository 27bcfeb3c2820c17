"""Distillation helps (slow): on the demo corpus with the demo config, for two student seeds, the
student distilled from the cache (alpha 0.5) reaches a lower validation CE than the same student
trained without distillation (alpha 1) for the same steps and seed."""
import dataclasses
import json

import pytest

from logitcache.run import load_run_config, run_pipeline

pytestmark = pytest.mark.slow


def test_distilled_student_beats_the_baseline(tmp_path):
    config = load_run_config(None)  # configs/demo.toml: small presets on the embedded demo corpus
    config = dataclasses.replace(config, student=dataclasses.replace(config.student, seeds=(0, 1)))
    report = run_pipeline(config, tmp_path / "work")
    distilled = report["students"]["distilled"]["seeds"]
    baseline = report["students"]["baseline"]["seeds"]
    print(json.dumps({"distilled": [s["dev_ce"] for s in distilled], "baseline": [s["dev_ce"] for s in baseline]}))
    for d, b in zip(distilled, baseline):
        assert d["dev_ce"] < b["dev_ce"], (d, b)
    teachers = [t["dev_ce"] for t in report["teachers"]]
    assert max(teachers) < min(b["dev_ce"] for b in baseline)  # the teachers are clearly better than the student
