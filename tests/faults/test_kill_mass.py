"""SIGKILL a mass-target `dump` at seeded random points, with pauses injected inside block writes; resume.

Blocks marked done before a kill are byte-identical afterwards (never rewritten), and the resumed cache
equals an uninterrupted one array for array (counts, flat ids and codes, markers, checksums).
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest
import zarr

from .test_kill import kill_after, run_to_end, setup  # noqa: F401  (setup: the module's data and teachers)

pytestmark = pytest.mark.slow
KILL_POINTS = 6
ARRAYS = ("tokens", "mass_count", "mass_ids", "mass_probs")


def mass_args(data, teachers, out):
    return ["dump", "--data", data, "--teacher", teachers[0], "--teacher", teachers[1], "--out", out, "--targets", "mass",
            "--mass", 0.2, "--max-k", 24, "--temperature", 1.0, "--block-rows", 8, "--batch-size", 4,
            "--max-chunks", 160, "--device", "cpu"]


def stored(cache) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(cache), mode="r")
    return {name: group[name][:] for name in ARRAYS + ("done", "checksum")}


def block_files(cache, block: int) -> dict[str, bytes]:
    from logitcache.store import block_chunk_path

    return {name: block_chunk_path(cache, name, block).read_bytes() for name in ARRAYS}


def test_mass_dump_survives_sigkill_anywhere(setup):  # noqa: F811
    root, data, teachers = setup
    reference = root / "mass-reference.zarr"
    t0 = time.perf_counter()
    run_to_end(mass_args(data, teachers, reference))
    duration = time.perf_counter() - t0
    counts = stored(reference)["mass_count"]
    assert counts.min() < counts.max() == 24  # ragged: the flat rows hold different totals per block
    rng = random.Random(2718)
    kills = 0
    for point in range(KILL_POINTS):
        out = root / f"mass-killed{point}.zarr"
        env = {"LOGITCACHE_FAULT_WRITE_PAUSE": "0.05"}
        killed = kill_after(mass_args(data, teachers, out), rng.uniform(0.3 * duration, 1.0 * duration), env)  # late start-up to the last block
        kills += killed
        if not (out / "zarr.json").exists():  # killed before the store was created: start again
            run_to_end(mass_args(data, teachers, out))
        else:
            done = stored(out)["done"].astype(bool)
            before = {b: block_files(out, b) for b in np.flatnonzero(done)}
            run_to_end(mass_args(data, teachers, out) + ["--resume"])
            for block, files in before.items():  # complete blocks are never rewritten
                assert block_files(out, block) == files, (point, block)
        a, b = stored(reference), stored(out)
        for name in a:
            assert np.array_equal(a[name], b[name]), (point, name)
    assert kills >= KILL_POINTS // 2  # most seeded points really interrupted the job
