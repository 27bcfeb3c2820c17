"""Caches written by an earlier commit (tests/fixtures/caches/, made by tests/fixtures/make_caches.py) read
exactly as that commit's reader read them: every kind of target, a cache with teacher counts, and codes
other than the default."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "caches"
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
