"""`tokens.zarr`: one (N, T) array of token ids per split, written once by `prepare`."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from ..errors import LogitcacheError
from .ids import token_dtype  # noqa: F401  (re-exported: the token store's id width)
from .location import Location, as_location

ATTRS_KEY = "logitcache"


def write_token_store(path: Path, splits: dict[str, np.ndarray], attrs: dict, rows_per_chunk: int = 4096) -> None:
    """Write `tokens.zarr` (one (N, T) array per split) into a temp dir, then rename into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
    for name, rows in splits.items():
        array = group.create_array(
            name, shape=rows.shape, chunks=(max(1, min(rows_per_chunk, rows.shape[0])), rows.shape[1]),
            dtype=rows.dtype, compressors=ZstdCodec(level=3), fill_value=0,
        )
        if rows.shape[0]:
            array[:] = rows
    group.attrs.update({ATTRS_KEY: attrs})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


class TokenStore:
    """Read side of `tokens.zarr`: `attrs`, and `split(name)` -> (N, T) numpy array."""

    def __init__(self, path: "str | Path | Location"):
        location = as_location(path)
        self.path = str(location)
        location.check_reachable()
        if location.read_bytes("zarr.json") is None:
            raise LogitcacheError(f"{self.path} is not a token store (run `logitcache prepare` first)")
        try:
            self.group = zarr.open_group(store=location.zarr_store(read_only=True), mode="r")
            self.attrs = dict(self.group.attrs[ATTRS_KEY])
        except Exception as exc:
            raise LogitcacheError(f"cannot read token store {self.path}: {exc}") from None

    def split(self, name: str) -> np.ndarray:
        if name not in self.group:
            raise LogitcacheError(f"token store {self.path} has no split '{name}'")
        return self.group[name][:]

    def num_rows(self, name: str) -> int:
        return self.group[name].shape[0] if name in self.group else 0
