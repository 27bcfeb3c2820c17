"""The named schema (logitcache/targets.py): caches of every target kind written by logitcache a4464a5 read into
`Targets` exactly as that version's positional reader decoded them, and the batch dict round-trips.

tests/fixtures/caches/<kind>.zarr and <kind>.npz were written by a4464a5 (CacheStore.write_block over
tests/test_chunks.py's random blocks) with what its `open_cache` returned: `read(0, 5)`, `read(1, 4)`,
`read_block(1, by_prob=False)` as positional tuples and `read_teacher_count(0, 5)`."""
from pathlib import Path

import numpy as np
import pytest
import zarr

from logitcache.store import open_cache
from logitcache.targets import BATCH_KEYS, Targets, batch_arrays, from_batch_arrays

FIXTURES = Path(__file__).parent / "fixtures" / "caches"
KINDS = ["topk", "sampled", "mass", "counted", "mass-counted"]
POSITIONAL = ("tokens", "ids", "probs", "weights")  # the old tuple's order


def same(targets: Targets, expected: dict, prefix: str) -> None:
    old = [expected[f"{prefix}{i}"] for i in range(4) if f"{prefix}{i}" in expected]
    got = targets.arrays()
    for name, array in zip(POSITIONAL, old):
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), (prefix, name)
    assert (targets.weights is not None) == (len(old) == 4)


@pytest.mark.parametrize("kind", KINDS)
def test_a_cache_written_before_reads_identically(kind):
    expected = dict(np.load(FIXTURES / f"{kind}.npz"))
    reader = open_cache(FIXTURES / f"{kind}.zarr")
    whole = reader.read(0, 5)
    same(whole, expected, "read_")
    same(reader.read(1, 4), expected, "read_1_4_")
    same(reader.read_block(1, by_prob=False), expected, "block1_by_id_")
    layout = reader.layout
    if layout.with_teacher_count:
        assert np.array_equal(whole.teacher_count, expected["teacher_count"])
    else:
        assert whole.teacher_count is None
    if layout.ragged:  # the counts as stored, read by zarr itself
        stored = zarr.open_array(FIXTURES / f"{kind}.zarr" / "mass_count", mode="r")[:]
        assert np.array_equal(whole.mass_count, stored)
        kept = np.arange(layout.k) < whole.mass_count[..., None]
        assert (whole.probs[~kept] == 0).all()
    else:
        assert whole.mass_count is None


@pytest.mark.parametrize("kind", KINDS)
def test_the_batch_dict_names_every_field_and_round_trips(kind):
    targets = open_cache(FIXTURES / f"{kind}.zarr").read(0, 5)
    batch = batch_arrays(targets)
    assert {"input_ids", "topk_ids", "topk_probs"} <= set(batch) <= set(BATCH_KEYS.values())
    assert ("sample_weights" in batch) == (kind == "sampled")
    assert ("teacher_count" in batch) == kind.endswith("counted")
    back = from_batch_arrays(batch | {"labels": batch["input_ids"]})
    assert back.arrays().keys() == targets.arrays().keys()
    assert all(np.array_equal(a, back.arrays()[name]) for name, a in targets.arrays().items())
    rows = targets.rows(np.array([3, 0]), copy=True)
    assert np.array_equal(Targets.concat([targets.rows(slice(3, 4)), targets.rows(slice(0, 1))]).probs, rows.probs)
