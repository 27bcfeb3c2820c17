"""Several ranks under a real torchrun (gloo on CPU): the decisions every rank must take together."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import dump_config
from logitcache.dump import dump
from logitcache.errors import LogitcacheError
from logitcache.store import block_chunk_path, open_cache, verify_cache


def torchrun(*args, nproc=2, timeout=240):
    """`torchrun --nproc-per-node N -m logitcache_cli ARGS`; a hang fails the test instead of the suite."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "logitcache_cli", *map(str, args)]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {timeout} s (a rank waiting forever?)")


def dump_args(data, teachers, out):
    return ["dump", "--data", data, "--teacher", teachers[0], "--teacher", teachers[1], "--out", out, "--top-k", 8,
            "--temperature", 2.0, "--block-rows", 8, "--batch-size", 4, "--max-chunks", 40, "--device", "cpu"]


def test_torchrun_dump_overwrite_three_times_leaves_a_complete_cache(tmp_path, tiny_data, tiny_teachers, tiny_cache):
    """Only rank 0 deletes and recreates the output; the others wait for it (were every rank to delete
    it, runs would end with no cache at all). The summary describes the finished cache."""
    out = tmp_path / "c.zarr"
    reference = open_cache(tiny_cache).read(0, 40)
    for attempt in range(3):
        proc = torchrun(*dump_args(tiny_data, tiny_teachers, out), "--overwrite")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert verify_cache(out) == [], attempt
        assert all(np.array_equal(a, b) for a, b in zip(open_cache(out).read(0, 40).arrays().values(), reference.arrays().values())), attempt
        assert "5/5" in proc.stdout, proc.stdout  # blocks done, counted after every rank finished


def test_torchrun_dump_refuses_on_every_rank_without_hanging(tmp_path, tiny_data, tiny_teachers, tiny_cache, copy_of):
    """An existing cache without --resume: rank 0's refusal reaches rank 1 (which would otherwise wait)."""
    cache = copy_of(tiny_cache)
    before = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    proc = torchrun(*dump_args(tiny_data, tiny_teachers, cache), timeout=120)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} == before


def test_every_rank_checks_resume_against_its_own_config(tmp_path, tiny_data, tiny_teachers, tiny_cache, copy_of,
                                                         monkeypatch):
    """Independent ranks (RANK/WORLD_SIZE without torchrun): rank 1 with another temperature must not add
    blocks of other targets to rank 0's cache."""
    cache = copy_of(tiny_cache)
    for block in (1, 3):  # rank 1's blocks, as if it had not run yet
        block_chunk_path(cache, "done", block).unlink()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(LogitcacheError, match="different config"):
        dump(dump_config(tiny_data, tiny_teachers, cache, temperature=1.0), resume=True)
    assert verify_cache(cache) == ["block 1: not done", "block 3: not done"]
    with pytest.raises(LogitcacheError, match="needs torchrun"):
        dump(dump_config(tiny_data, tiny_teachers, tmp_path / "new.zarr"), overwrite=True)


def test_torchrun_student_with_a_rank_whose_rows_are_all_bad(tmp_path, tiny_data, tiny_cache, copy_of):
    """--skip-bad-blocks with 2 ranks: steps where one rank has no rows are skipped by both (before: that
    rank skipped alone and DDP waited forever)."""
    cache = copy_of(tiny_cache)
    for block in (0, 1, 2):
        block_chunk_path(cache, "topk_ids", block).unlink()
    out = tmp_path / "s"
    proc = torchrun("train-student", "--cache", cache, "--data", tiny_data, "--out", out, "--preset", "llama-tiny",
                    "--skip-bad-blocks", "--shuffle-buffer", 40, "--max-steps", 10, "--batch-size", 4, "--lr", 3e-3,
                    "--warmup-steps", 2, "--val-chunks", 8, "--device", "cpu", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "lr" in r]
    assert len(steps) == 10 and any(r.get("skipped") for r in steps) and any("loss" in r for r in steps)
    assert json.loads((out / "logitcache_config.json").read_text())["world_size"] == 2
