"""Caches written by a4464a5's dump (tests/fixtures/dumps/, made by tests/fixtures/make_caches.py) read
exactly as that commit's reader read them: every kind of target, a cache with teacher counts, and codes
other than the default."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.zarr"))


def test_the_fixtures_cover_every_target_kind():
    kinds = {name.split("-")[0] for name in NAMES}
    assert kinds == {"topk", "sample", "mass", "mixed"}, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_a_cache_written_by_a4464a5_reads_the_same(name):
    from logitcache.store import open_cache

    expected = dict(np.load(FIXTURES / f"{name}.npz"))
    reader = open_cache(FIXTURES / f"{name}.zarr")
    n = len(reader)
    read = reader.read(0, n)  # Targets: the arrays by name
    got = {"tokens": read.tokens, "ids": read.ids, "probs": read.probs, "teacher_count": read.teacher_count}
    assert (read.teacher_count is None) != reader.layout.with_teacher_count
    assert (read.mass_count is None) != reader.layout.ragged
    if read.teacher_count is None:  # a4464a5 read a cache without the array as every teacher at every position
        got["teacher_count"] = np.full(read.tokens.shape, len(reader.attrs["teachers"]), np.uint8)
    if reader.layout.with_weights:
        got["weights"] = read.weights
    for block in range(reader.layout.n_blocks):
        by_id = reader.read_block(block, by_prob=False)
        got[f"block{block}_ids"], got[f"block{block}_probs"] = by_id.ids, by_id.probs
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    if name.startswith("mixed"):  # the fixture holds what it stands for: positions with one and with two teachers
        assert reader.layout.with_teacher_count and set(np.unique(got["teacher_count"])) == {1, 2}
    if name.startswith("sample"):
        assert (got["weights"] > 0).any()


def test_a_read_only_code_is_refused_for_writing_in_one_line_naming_the_written_codes(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from logitcache.config import DumpConfig
    from logitcache.errors import LogitcacheError
    from logitcache.store import PROB_CODES, READ_ONLY_CODES
    from logitcache_cli.app import app

    assert set(PROB_CODES) == {"sqrt-u7", "log-s272", "float16", "float32"} and not set(PROB_CODES) & set(READ_ONLY_CODES)
    for name in READ_ONLY_CODES:
        with pytest.raises(LogitcacheError) as refused:
            DumpConfig(data=tiny_data, teachers=(tmp_path,), out=tmp_path / "c.zarr", prob_dtype=name)
        assert "\n" not in str(refused.value) and all(kept in str(refused.value) for kept in PROB_CODES)
    result = CliRunner().invoke(app, ["dump", "--data", str(tiny_data), "--teacher", str(tmp_path), "--out",
                                      str(tmp_path / "c.zarr"), "--prob-dtype", "log-u8"])
    assert result.exit_code == 2 and "sqrt-u7" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("name", NAMES)
def test_the_output_settings_a_cache_recorded_are_this_configs(name):
    """The resume check and run's dump stamp compare DumpConfig.output_settings(): for the settings a cache
    written by a4464a5 recorded, this config gives the same ones (its Ray settings go to `ray`), so such a cache
    resumes and its stamp's hash holds; a cache of a read-only code is refused for writing instead."""
    from logitcache._settings import from_dict
    from logitcache.config import DumpConfig, dump_output_settings
    from logitcache.errors import LogitcacheError
    from logitcache.store import READ_ONLY_CODES, open_cache

    recorded = open_cache(FIXTURES / f"{name}.zarr").attrs["config"]
    ray_keys = {"ray_address": "address", "workers": "workers", "gpus_per_worker": "gpus_per_worker",
                "cpus_per_worker": "cpus_per_worker"}
    settings = {k: v for k, v in recorded.items() if k not in ray_keys}
    settings["ray"] = {ray_keys[k]: v for k, v in recorded.items() if k in ray_keys}
    if recorded["prob_dtype"] in READ_ONLY_CODES:
        with pytest.raises(LogitcacheError, match="prob_dtype"):
            from_dict(DumpConfig, settings)
        return
    config = from_dict(DumpConfig, settings)
    assert config.output_settings() == dump_output_settings(recorded)
    assert settings["ray"] and set(recorded) - set(ray_keys) | {"ray"} == {f.name for f in dataclasses.fields(config)}
