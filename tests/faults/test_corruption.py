"""Flip, truncate and delete chunk files and metadata of a cache and of a checkpoint: every fault is
reported by block (verify), refused with one clear line (open, train-student, resume), never trained on."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_train
from logitcache import open_cache
from logitcache.store import block_chunk_path, verify_cache
from logitcache.errors import CacheCorruptError, LogitcacheError
from logitcache.student import StudentConfig, train_student
from logitcache.teacher import TeacherConfig, train_teacher


def flip(path, offset=None):
    blob = bytearray(path.read_bytes())
    i = len(blob) // 2 if offset is None else offset
    blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))


def truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


DATA_FAULTS = [(array, action, block) for array in ("tokens", "topk_ids", "topk_probs")
               for action in ("flip", "truncate", "delete") for block in (0, 4)]
MARKER_FAULTS = [("checksum", "flip", 1), ("checksum", "delete", 2), ("done", "delete", 3), ("done", "flip", 1)]


@pytest.mark.parametrize("array,action,block", DATA_FAULTS + MARKER_FAULTS,
                         ids=[f"{a}-{b}-block{c}" for a, b, c in DATA_FAULTS + MARKER_FAULTS])
def test_verify_reports_each_fault_by_block(tiny_cache, copy_of, array, action, block):
    cache = copy_of(tiny_cache)
    path = block_chunk_path(cache, array, block)
    {"flip": flip, "truncate": truncate, "delete": lambda p: p.unlink()}[action](path)
    problems = verify_cache(cache)
    assert len(problems) == 1 and problems[0].startswith(f"block {block}:"), problems


@pytest.mark.parametrize("target", ["group", "topk_probs", "done"])
@pytest.mark.parametrize("action", ["garble", "delete"])
def test_broken_metadata_is_one_clear_error(tiny_cache, copy_of, target, action):
    cache = copy_of(tiny_cache)
    meta = cache / "zarr.json" if target == "group" else cache / target / "zarr.json"
    if action == "delete":
        meta.unlink()
    else:
        meta.write_text(meta.read_text()[:40])
    with pytest.raises(LogitcacheError):
        open_cache(cache)
    with pytest.raises(LogitcacheError):  # verify refuses it too (a separate call: it must raise on its own)
        verify_cache(cache)


def test_foreign_attributes_are_refused(tiny_cache, copy_of):
    cache = copy_of(tiny_cache)
    meta = json.loads((cache / "zarr.json").read_text())
    meta["attributes"]["logitcache"]["schema_version"] = 99
    (cache / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(LogitcacheError, match="schema"):
        open_cache(cache)


def test_train_student_refuses_missing_done_markers(tmp_path, tiny_data, tiny_cache, copy_of):
    cache = copy_of(tiny_cache)
    block_chunk_path(cache, "done", 2).unlink()
    with pytest.raises(LogitcacheError, match="incomplete.*block 2"):
        train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    train=tiny_train(2)))


@pytest.mark.parametrize("action", ["flip", "truncate"])
def test_train_student_stops_on_a_bad_block_and_never_trains_on_it(tmp_path, tiny_data, tiny_cache, copy_of, action):
    cache = copy_of(tiny_cache)
    {"flip": flip, "truncate": truncate}[action](block_chunk_path(cache, "topk_ids", 1))
    with pytest.raises(CacheCorruptError, match="block 1"):
        train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s", preset="llama-tiny",
                                    shuffle_buffer=8, train=tiny_train(10)))
    report = train_student(StudentConfig(cache=cache, data=tiny_data, out=tmp_path / "s2", preset="llama-tiny",
                                         shuffle_buffer=8, skip_bad_blocks=True, train=tiny_train(4)))
    assert report.skipped_blocks == [1]


@pytest.mark.parametrize("action", ["flip", "truncate"])
def test_corrupt_checkpoint_is_refused_on_resume(tmp_path, tiny_data, action):
    out = tmp_path / "t"
    config = TeacherConfig(data=tiny_data, out=out, arch="llama", preset="llama-tiny", train=tiny_train(4))
    train_teacher(config)
    state = out / "checkpoint" / "state.pt"
    {"flip": lambda p: flip(p, 100), "truncate": truncate}[action](state)
    with pytest.raises(LogitcacheError, match="checkpoint"):
        train_teacher(config, resume=True)
