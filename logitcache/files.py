"""File helpers: atomic writes and folder swaps, sha256 of a file, an output path checked before writing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import LogitcacheError


def write_json_atomic(path: Path, payload) -> None:
    """Write then rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Swap the finished folder `tmp` in at `dst` so that a kill at any moment leaves a whole folder:
    `dst` is renamed aside to `dst.old`, `tmp` renamed in, then the old one deleted. A kill between the
    two renames leaves only `dst.old`, which recover_dir (called before `dst` is read or replaced) puts
    back; deleting `dst` before the rename would leave nothing."""
    tmp, dst = Path(tmp), Path(dst)
    old = dst.with_name(dst.name + ".old")
    recover_dir(dst)
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dst: Path) -> None:
    """Put back the folder a replace_dir killed between its renames left aside (`dst.old` without `dst`)."""
    dst = Path(dst)
    old = dst.with_name(dst.name + ".old")
    if old.is_dir() and not dst.exists():
        os.replace(old, dst)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output(path: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to write into a path that already holds something, unless resuming or --overwrite."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if resume:
        return
    if not overwrite:
        raise LogitcacheError(f"{path} already exists and is not empty; pass --overwrite to replace it"
                              + (" or --resume to continue it" if path.is_dir() else ""))
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
