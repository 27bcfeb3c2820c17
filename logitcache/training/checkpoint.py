"""The training checkpoint: plain tensors and containers only, loaded with `weights_only=True`.

File: `OUT/checkpoint/state.pt`, a `torch.save` zip followed by a 16-byte trailer (magic `LCCK`,
crc32c of the payload as uint32 LE, payload size as uint64 LE). Written to a temp file, fsynced,
then renamed, so a kill never leaves half a checkpoint; a damaged one is refused on resume instead
of loading changed weights. Nothing in it needs pickle to read: a checkpoint from elsewhere (a
shared bucket, a colleague's run) cannot run code on `--resume`.
"""
from __future__ import annotations

import random
from pathlib import Path

import crc32c
import numpy as np
import torch

from ..errors import LogitcacheError
from ..faults import fault_pause
from ..files import atomic_file

CHECKPOINT = "checkpoint"
CHECKPOINT_MAGIC = b"LCCK"
TRAILER_BYTES = 16


def _crc32c_of(f, size: int) -> int:
    """crc32c of the first `size` bytes of an open file, read in 16 MiB pieces (never whole)."""
    crc, left = 0, size
    f.seek(0)
    while left > 0 and (piece := f.read(min(left, 1 << 24))):
        crc, left = crc32c.crc32c(piece, crc), left - len(piece)
    return crc


def save_checkpoint(out: Path, state: dict) -> None:
    """torch.save into a temp file, a checksum trailer, fsync, then rename."""
    folder = Path(out) / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "state.pt") as tmp:
        torch.save(state, tmp)
        size = tmp.stat().st_size
        with open(tmp, "r+b") as f:
            crc = _crc32c_of(f, size)
            f.seek(size)
            f.write(CHECKPOINT_MAGIC + crc.to_bytes(4, "little") + size.to_bytes(8, "little"))
        fault_pause("LOGITCACHE_FAULT_CHECKPOINT_PAUSE")  # fault-injection tests: kill between write and rename


def load_checkpoint(out: Path) -> dict | None:
    """The saved state, or None when there is no checkpoint; a damaged or foreign file is refused."""
    path = Path(out) / CHECKPOINT / "state.pt"
    if not path.exists():
        return None
    total = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(total - TRAILER_BYTES, 0))
        trailer = f.read(TRAILER_BYTES)
        size = total - TRAILER_BYTES
        if len(trailer) < TRAILER_BYTES or trailer[:4] != CHECKPOINT_MAGIC:
            raise LogitcacheError(f"checkpoint {path} has no checksum trailer (truncated, or not written by logitcache); "
                                  "delete it to start over")
        if int.from_bytes(trailer[8:], "little") != size or _crc32c_of(f, size) != int.from_bytes(trailer[4:8], "little"):
            raise LogitcacheError(f"checkpoint {path} fails its checksum (changed after writing); delete it to start over")
    try:  # the zip reader finds its directory from the end and ignores the trailer after it
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise LogitcacheError(f"checkpoint {path} holds Python objects beyond tensors and plain containers; "
                                  "refused (loading it could run code)") from None
        raise LogitcacheError(f"checkpoint {path} is unreadable ({exc.__class__.__name__}); delete it to start over") from None


def rng_state() -> dict:
    """Every RNG the training touches, as tensors and plain values (no numpy objects: weights_only)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
