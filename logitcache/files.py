"""File helpers: atomic writes of files and folders, sha256 of a file, an output path checked before writing.

Every file or folder logitcache replaces goes through atomic_file or atomic_dir: written as a temp
sibling (a file is fsynced), then renamed into place, so a reader or a kill never sees half of one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from .errors import LogitcacheError


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temp sibling of `path` to write; once the block ends, fsync it and rename it over `path`.
    On an error the temp file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(dst: Path, suffix: str = ".tmp"):
    """Yield a fresh temp sibling folder of `dst` to fill; once the block ends, swap it in (replace_dir:
    a kill at any moment leaves the old folder or the new one). On an error `dst` is left as it was."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + suffix)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dst)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload) -> None:
    write_text_atomic(path, json_text(payload, indent=2, sort_keys=True) + "\n")


def json_text(payload, **options) -> str:
    """`payload` as JSON that every JSON reader parses: a float that is not finite (NaN, inf: no JSON number;
    Python's json writes a bare NaN) is written as null, and allow_nan=False makes sure none is left."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(payload), allow_nan=False, **options)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Swap the finished folder `tmp` in at `dst` so that a kill at any moment leaves a whole folder:
    `dst` is renamed aside to `dst.old`, `tmp` renamed in, then the old one deleted. A kill between the
    two renames leaves only `dst.old`, which recover_dir (called before `dst` is read or replaced) puts
    back; deleting `dst` before the rename would leave nothing."""
    tmp, dst = Path(tmp), Path(dst)
    old = dst.with_name(dst.name + ".old")
    recover_dir(dst)
    _remove(old)
    if dst.exists():  # a folder, or a file `--overwrite` replaces by a folder
        os.replace(dst, old)
    os.replace(tmp, dst)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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


def check_output(path: Path, resume: bool = False, overwrite: bool = False) -> bool:
    """Refuse a stage's output path that already holds something, unless resuming or overwriting; True
    when it holds something. Stages call this before reading any input, and prepare_output just before
    they write, so bad input never costs the old output."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    if not resume and not overwrite:
        raise LogitcacheError(f"{path} already exists and is not empty; pass --overwrite to replace it"
                              + (" or --resume to continue it" if path.is_dir() else ""))
    return True


def prepare_output(path: Path, resume: bool = False, overwrite: bool = False) -> None:
    """check_output, then with `overwrite` (and not `resume`) delete what the path holds."""
    path = Path(path)
    if not check_output(path, resume, overwrite) or resume:
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
