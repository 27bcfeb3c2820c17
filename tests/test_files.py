"""Folder swaps that a kill at any moment leaves whole (files.replace_dir / recover_dir)."""
from __future__ import annotations

import os

import pytest


def folder(path, text: str):
    path.mkdir(parents=True)
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

        def save_pretrained(self, where):
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
