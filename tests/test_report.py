"""report.md says what its numbers say: the distillation verdict follows the gain and the seeds' spread, and the
cache line names the kind of targets the cache holds."""
import math

import pytest

from conftest import dump_config
from logitcache.report import markdown


def model(dev_ce: float, name: str = "m") -> dict:
    return {"name": name, "params": 1e6, "dev_ce": dev_ce, "dev_ppl": math.exp(dev_ce), "test_ce": dev_ce,
            "test_ppl": math.exp(dev_ce), "dev_bits_per_byte": 1.5}


def report_of(distilled: list[float], baseline: list[float], cache: dict | None = None) -> dict:
    """A report whose students have these per-seed dev CEs (the group's dev_ce is their mean, as write_report's)."""
    def group(ces):
        seeds = [model(ce, f"x (seed{i})") for i, ce in enumerate(ces)]
        spread = {k: {"mean": sum(s[k] for s in seeds) / len(seeds), "min": min(s[k] for s in seeds),
                      "max": max(s[k] for s in seeds)} for k in ("dev_ce", "test_ce")}
        return model(sum(ces) / len(ces)) | {"seeds": seeds, "spread": spread}

    groups = {"distilled": group(distilled), "baseline": group(baseline)}
    cache = cache or {"k": 8, "temperature": 2.0, "prob_dtype": "sqrt-u7", "targets": "topk"}
    cache = cache | {"bytes_per_token": 20.0, "full_logit_bytes_per_token": 1200.0, "bytes_on_disk": 1e6,
                     "full_logit_bytes": 1e8}
    return {"teachers": [model(5.0, "llama")], "students": groups, "cache": cache,
            "distillation_gain_dev_ce": groups["baseline"]["dev_ce"] - groups["distilled"]["dev_ce"],
            "stages": {}, "stages_ran": [], "stages_reused": [], "plots": []}


def verdict(report: dict) -> str:
    return next(line for line in markdown(report).splitlines() if line.startswith("Distillation"))


def test_a_gain_that_prints_as_zero_is_no_difference():
    line = verdict(report_of([5.50001], [5.50003]))
    assert "helps" not in line and "no difference" in line and "to 4 decimals" in line


def test_a_gain_inside_the_seeds_noise_says_so():
    line = verdict(report_of([5.40, 5.60, 5.50], [5.45, 5.55, 5.52]))  # per-seed gains +0.05, -0.05, +0.02
    assert line.startswith("Distillation's effect is within the seeds' noise") and "helps" not in line
    assert "distilled better in 2 of 3 seeds" in line


def test_a_gain_beyond_the_seeds_noise_helps_and_a_loss_does_not():
    # gains 0.10, 0.11, 0.09: mean 0.10, 95% interval +-4.30 * 0.01 / sqrt(3) = +-0.0248, by hand
    line = verdict(report_of([5.40, 5.50, 5.60], [5.50, 5.61, 5.69]))
    assert line.startswith("Distillation helps:") and "0.1000 nats/token lower" in line and "+-0.0248" in line
    line = verdict(report_of([5.50, 5.61, 5.69], [5.40, 5.50, 5.60]))
    assert line.startswith("Distillation does not help:") and "0.1000 nats/token higher" in line


def test_a_dev_ce_that_is_not_a_number_gives_no_verdict():
    line = verdict(report_of([float("nan"), 5.5], [5.6, 5.6]))
    assert line == "Distillation's effect is unknown: a student's dev CE is not a number."


def test_one_seed_says_it_measures_no_noise():
    line = verdict(report_of([5.4], [5.5]))
    assert line.startswith("Distillation helps for this one student seed") and "set student.seeds" in line


@pytest.mark.parametrize("targets,settings,expected", [
    ("topk", {}, "- top-8 targets at T = 2.0"),
    ("sample", {"samples": 6, "proposal_temperature": 1.5},
     "- sampled targets (6 draws per position from p^(1/1.5), the drawn ids with importance weights) at T = 2.0"),
    ("mass", {"mass": 0.5, "max_k": 7},
     "- mass targets (per position the fewest top ids that hold 0.5 of the probability, at most 7) at T = 2.0"),
])
def test_the_cache_line_names_the_cache_s_own_targets(tmp_path, tiny_data, tiny_teachers, targets, settings, expected):
    from logitcache.dump import dump
    from logitcache.report import cache_entry

    out = tmp_path / "cache.zarr"
    dump(dump_config(tiny_data, tiny_teachers[:1], out, targets=targets, max_chunks=8, **settings))
    entry = cache_entry(out)
    assert entry["targets"] == targets
    text = markdown(report_of([5.4], [5.5], cache=entry))
    assert expected in text
    assert ("top-" in text) == (targets == "topk")
