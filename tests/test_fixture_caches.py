"""Caches written by an earlier commit (tests/fixtures/dumps/, made by tests/fixtures/make_caches.py) read
exactly as that commit's reader read them: every kind of target, a cache with teacher counts, and codes
other than the default."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.zarr"))


def test_the_fixtures_cover_every_target_kind():
    kinds = {name.split("-")[0] for name in NAMES}
    assert kinds == {"topk", "sample", "mass", "mixed"}, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_a_cache_written_before_reads_the_same(name):
    from logitcache.store import open_cache

    expected = dict(np.load(FIXTURES / f"{name}.npz"))
    reader = open_cache(FIXTURES / f"{name}.zarr")
    n = len(reader)
    read = reader.read(0, n)
    got = {"tokens": read[0], "ids": read[1], "probs": read[2], "teacher_count": reader.read_teacher_count(0, n)}
    if reader.layout.with_weights:
        got["weights"] = read[3]
    for block in range(reader.layout.n_blocks):
        by_id = reader.read_block(block, by_prob=False)
        got[f"block{block}_ids"], got[f"block{block}_probs"] = by_id[1], by_id[2]
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
