"""Atomic files and folder swaps that a kill at any moment leaves whole (files.atomic_file, atomic_dir,
replace_dir, recover_dir), and stages that guard their own outputs."""
from __future__ import annotations

import os

import pytest


def folder(path, text: str):
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights").write_text(text)
    return path


class Killed(Exception):
    pass


def kill_at_rename(monkeypatch, n: int):
    """os.replace inside files.py raises on its n-th call (1-based), as a kill between renames would."""
    from logitcache import files

    calls = []
    real = os.replace

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == n:
            raise Killed()
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    return calls


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_swap_killed_at_either_rename_leaves_a_whole_folder(tmp_path, monkeypatch, kill_at):
    from logitcache.files import recover_dir, replace_dir

    dst, tmp = folder(tmp_path / "best", "old"), folder(tmp_path / "best.tmp", "new")
    kill_at_rename(monkeypatch, kill_at)
    with pytest.raises(Killed):
        replace_dir(tmp, dst)
    monkeypatch.undo()
    recover_dir(dst)
    assert (dst / "weights").read_text() == "old"  # the last whole folder, never nothing
    replace_dir(tmp, dst)  # the rerun finishes the swap
    assert (dst / "weights").read_text() == "new" and not tmp.exists()
    assert not (tmp_path / "best.old").exists()


def test_save_model_killed_mid_swap_keeps_the_previous_best(tmp_path, monkeypatch):
    """train.save_model replaces best/ through replace_dir: killed between its renames, finalize still
    finds the previous best."""
    from logitcache.training.loop import finalize, save_model

    class Model:
        def __init__(self, text):
            self.text = text

        def save_pretrained(self, where, state_dict=None):
            folder(__import__("pathlib").Path(where), self.text)

    out = tmp_path / "run"
    out.mkdir()
    save_model(Model("step 10"), out / "best")
    kill_at_rename(monkeypatch, 2)
    with pytest.raises(Killed):
        save_model(Model("step 20"), out / "best")
    monkeypatch.undo()
    assert not (out / "best").exists()  # the moment a kill leaves
    finalize(out)
    assert (out / "weights").read_text() == "step 10" and (out / "COMPLETE").exists()


def tree_of(root) -> dict:
    from pathlib import Path

    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_every_stage_guards_its_own_output(tmp_path, tiny_raw, tiny_data, tiny_cache):
    """Called as library functions (no CLI in between), prepare, train-teacher, train-student and export
    refuse an output that holds something; with overwrite and an input that fails its check, the old
    output is still there byte for byte."""
    from conftest import tiny_train
    from logitcache.config import ExportConfig, PrepareConfig, StudentConfig, TeacherConfig
    from logitcache.errors import LogitcacheError
    from logitcache.export import export
    from logitcache.prepare import prepare
    from logitcache.train_student import train_student
    from logitcache.train_teacher import train_teacher

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    before = tree_of(old)
    missing = tmp_path / "no-such-data"
    cases = [
        (lambda **kw: prepare(PrepareConfig(data=tiny_raw, out=old, vocab_size=300, seq_len=32), **kw),
         lambda **kw: prepare(PrepareConfig(data=missing, out=old, vocab_size=300, seq_len=32), **kw)),
        (lambda **kw: train_teacher(TeacherConfig(data=tiny_data, out=old, arch="llama", preset="llama-tiny",
                                                  train=tiny_train(2)), **kw),
         lambda **kw: train_teacher(TeacherConfig(data=missing, out=old, arch="llama", preset="llama-tiny",
                                                  train=tiny_train(2)), **kw)),
        (lambda **kw: train_student(StudentConfig(cache=tiny_cache, data=tiny_data, out=old, preset="llama-tiny",
                                                  train=tiny_train(2)), **kw),
         lambda **kw: train_student(StudentConfig(cache=tmp_path / "no-cache.zarr", data=tiny_data, out=old,
                                                  preset="llama-tiny", train=tiny_train(2)), **kw)),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((cases[0][0], lambda **kw: prepare(PrepareConfig(data=tiny_raw, out=old, tokenizer=empty, seq_len=32),
                                                    **kw)))  # the text is read, then the tokenizer is refused
    for good, bad in cases:
        with pytest.raises(LogitcacheError, match="already exists and is not empty; pass --overwrite"):
            good()
        assert tree_of(old) == before
        with pytest.raises(LogitcacheError):
            bad(overwrite=True)
        assert tree_of(old) == before  # the bad input was refused before the old output was touched
    with pytest.raises(LogitcacheError, match="--overwrite"):
        export(ExportConfig(src=tmp_path, dst=old))
    assert tree_of(old) == before


def test_atomic_file_and_dir_leave_the_old_one_when_the_writer_fails(tmp_path):
    from logitcache.files import atomic_dir, atomic_file, write_json_atomic

    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "v": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]

    folder = tmp_path / "model"
    with atomic_dir(folder) as tmp:
        (tmp / "w.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "w.bin").write_bytes(b"ne")
            raise RuntimeError("killed mid-write")
    assert (folder / "w.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "model"]
    with atomic_dir(folder) as tmp:
        (tmp / "w.bin").write_bytes(b"new")
    assert (folder / "w.bin").read_bytes() == b"new"
