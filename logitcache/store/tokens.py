"""`tokens.zarr`: one (N, T) array of token ids per split, written once by `prepare`.

Each split array is chunked by `rows_per_chunk` rows (zstd with its frame checksum) and its attributes
hold `logitcache.chunk_crc32c`: one crc32c per storage chunk over that chunk's rows as stored (C order,
the store's dtype). Every read of a split checks them; a store without them is read unchecked, with a warning.

The group `text/` holds, per split, what recovers every chunk's exact text (docs/architecture.md, "The data
format"): `text/<split>_bytes` (n_bytes,) uint8, the split's cleaned text as UTF-8, documents back to back,
and `text/<split>_ends` (N * T,) uint32 (uint64 past 4 GiB), the byte offset in that text where each token
of the split's chunks ends (special tokens are zero-width: their end is the previous token's). Token i
covers bytes ends[i-1]..ends[i] (ends[-1] = 0). Both arrays carry per-chunk crc32c like the token chunks.
"""
from __future__ import annotations

import logging
from pathlib import Path

import crc32c
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from ..errors import LogitcacheError
from ..files import atomic_dir
from .ids import token_dtype  # noqa: F401  (re-exported: the token store's id width)
from .backends import as_location
from .location import Location

log = logging.getLogger(__name__)

ATTRS_KEY = "logitcache"  # the zarr attribute holding logitcache's own, in tokens.zarr and cache.zarr
CHECKSUMS_KEY = "chunk_crc32c"


def chunk_checksums(rows: np.ndarray, rows_per_chunk: int) -> list[int]:
    """crc32c of each run of `rows_per_chunk` rows (the storage chunks of a split array)."""
    return [crc32c.crc32c(np.ascontiguousarray(rows[start:start + rows_per_chunk]).tobytes())
            for start in range(0, rows.shape[0], rows_per_chunk)]


TEXT_GROUP = "text"
TEXT_CHUNK_BYTES = 1 << 26  # 64 MiB of text per storage chunk


def _checked_array(group, name: str, values: np.ndarray, chunk_len: int, compressors) -> None:
    """One array of `values`, chunked by `chunk_len` along axis 0, with each chunk's crc32c in its attributes."""
    chunk_len = max(1, min(chunk_len, values.shape[0]))
    array = group.create_array(name, shape=values.shape, chunks=(chunk_len, *values.shape[1:]), dtype=values.dtype,
                               compressors=compressors, fill_value=0)
    if values.shape[0]:
        array[:] = values
    array.attrs.update({ATTRS_KEY: {CHECKSUMS_KEY: chunk_checksums(values, chunk_len)}})


def text_ends_dtype(n_bytes: int):
    return np.uint32 if n_bytes < 2**32 else np.uint64


def write_token_store(path: Path, splits: dict[str, np.ndarray], attrs: dict, rows_per_chunk: int = 4096,
                      texts: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """Write `tokens.zarr` (one (N, T) array per split, each chunk's crc32c in its attributes; with `texts`,
    {split: (text bytes (n_bytes,) uint8, token ends (N * T,))} in `text/`) into a temp dir, then rename
    into place."""
    with atomic_dir(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        for name, rows in splits.items():
            _checked_array(group, name, rows, rows_per_chunk, ZstdCodec(level=3, checksum=True))
        for name, (text, ends) in (texts or {}).items():
            text_group = group.require_group(TEXT_GROUP)
            seq_len = splits[name].shape[1]
            _checked_array(text_group, f"{name}_bytes", text, TEXT_CHUNK_BYTES, ZstdCodec(level=3, checksum=True))
            _checked_array(text_group, f"{name}_ends", ends, rows_per_chunk * seq_len, ZstdCodec(level=3, checksum=True))
        group.attrs.update({ATTRS_KEY: attrs})


class TokenStore:
    """Read side of `tokens.zarr`: `attrs`, and `split(name)` -> (N, T) numpy array, every chunk checked
    against its crc32c."""

    def __init__(self, path: "str | Path | Location"):
        location = as_location(path)
        self.path = str(location)
        location.check_reachable()
        if location.read_bytes("zarr.json") is None:
            raise LogitcacheError(f"{self.path} is not a token store (run `logitcache prepare` first)")
        try:
            self.group = zarr.open_group(store=location.zarr_store(read_only=True), mode="r")
            self.attrs = dict(self.group.attrs[ATTRS_KEY])
            self.names = sorted(name for name, _ in self.group.arrays())
        except Exception as exc:
            raise LogitcacheError(f"cannot read token store {self.path}: {exc}") from None
        if self.unchecked_splits():
            log.warning("token store %s has no chunk checksums (split %s): its tokens are read unchecked; "
                        "re-run `logitcache prepare` to add them", self.path, ", ".join(self.unchecked_splits()))

    def _array(self, name: str):
        if name not in self.names:
            raise LogitcacheError(f"token store {self.path} has no split '{name}'")
        return self.group[name]

    def checksums(self, name: str) -> list[int] | None:
        """The split's per-chunk crc32c as `prepare` wrote them (None: the store has none)."""
        stored = self._array(name).attrs.get(ATTRS_KEY, {}).get(CHECKSUMS_KEY)
        return None if stored is None else [int(c) for c in stored]

    def unchecked_splits(self) -> list[str]:
        return [name for name in self.names if self.checksums(name) is None]

    def chunk_rows(self, name: str) -> int:
        return int(self._array(name).chunks[0])

    def n_chunks(self, name: str) -> int:
        array = self._array(name)
        return -(-array.shape[0] // array.chunks[0])

    def chunk_label(self, name: str, chunk: int) -> str:
        """How messages name one chunk: split, chunk index, its rows and its file in the store."""
        array = self._array(name)
        start = chunk * array.chunks[0]
        stop = min(start + array.chunks[0], array.shape[0])
        return f"split '{name}' chunk {chunk} (rows {start}-{stop - 1}, file {name}/c/{chunk}/0)"

    def read_chunk(self, name: str, chunk: int) -> tuple[np.ndarray | None, str | None]:
        """One chunk's rows (n, T) and a problem (None when sound): undecodable or a checksum mismatch."""
        array, checks = self._array(name), self.checksums(name)
        start = chunk * array.chunks[0]
        try:
            rows = array[start:start + array.chunks[0]]
        except Exception as exc:
            return None, f"{self.chunk_label(name, chunk)}: cannot be decoded ({exc})"
        return rows, self._mismatch(name, chunk, rows, checks)

    def _mismatch(self, name: str, chunk: int, rows: np.ndarray, checks: list[int] | None) -> str | None:
        if checks is None:
            return None
        if len(checks) != self.n_chunks(name):
            return f"split '{name}': {len(checks)} chunk checksums for {self.n_chunks(name)} chunks"
        if crc32c.crc32c(np.ascontiguousarray(rows).tobytes()) != checks[chunk]:
            return f"{self.chunk_label(name, chunk)}: checksum mismatch (the stored tokens changed after prepare)"
        return None

    def split(self, name: str) -> np.ndarray:
        """The split's rows (N, T), every chunk checked; a bad chunk is refused, naming it."""
        array, checks = self._array(name), self.checksums(name)
        try:
            rows = array[:]
        except Exception as exc:  # name the chunk that cannot be decoded
            for chunk in range(self.n_chunks(name)):
                problem = self.read_chunk(name, chunk)[1]
                if problem:
                    self._refuse(problem)
            self._refuse(f"split '{name}' cannot be read ({exc})")
        r = array.chunks[0]
        for chunk in range(self.n_chunks(name)):
            problem = self._mismatch(name, chunk, rows[chunk * r:(chunk + 1) * r], checks)
            if problem:
                self._refuse(problem)
        return rows

    def _refuse(self, problem: str):
        raise LogitcacheError(f"token store {self.path}: {problem}; `logitcache verify` checks every chunk, "
                              "re-run `logitcache prepare` to rebuild it")

    def has_text(self, name: str) -> bool:
        """Whether `prepare` recorded the split's text and token byte ends (docs: "The data format")."""
        try:
            text = self.group[TEXT_GROUP]
        except KeyError:
            return False
        return f"{name}_bytes" in text and f"{name}_ends" in text

    def text_arrays(self, name: str) -> list[tuple[str, object]]:
        """[(label, zarr array)] of the split's text record, the order the fingerprint hashes them."""
        text = self.group[TEXT_GROUP]
        return [(f"{TEXT_GROUP}/{name}_bytes", text[f"{name}_bytes"]), (f"{TEXT_GROUP}/{name}_ends", text[f"{name}_ends"])]

    def split_text(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(text bytes (n_bytes,) uint8, token ends (N * T,) int64) of a split, every chunk checked against
        its crc32c; a data dir prepared without them is refused in one line."""
        if not self.has_text(name):
            raise LogitcacheError(f"token store {self.path} records no text for split '{name}' (a teacher with a "
                                  "tokenizer of its own reads the chunks' text): re-run `logitcache prepare`")
        out = []
        for label, array in self.text_arrays(name):
            values = array[:]
            checks = array.attrs.get(ATTRS_KEY, {}).get(CHECKSUMS_KEY)
            step = array.chunks[0]
            stored = [crc32c.crc32c(np.ascontiguousarray(values[i:i + step]).tobytes()) for i in range(0, values.shape[0], step)]
            if checks is None or [int(c) for c in checks] != stored:
                bad = next((i for i, (a, b) in enumerate(zip(stored, checks or [])) if int(b) != a), 0)
                self._refuse(f"{label} chunk {bad}: checksum mismatch (the stored text changed after prepare)")
            out.append(values)
        return out[0], out[1].astype(np.int64)

    def num_rows(self, name: str) -> int:
        return self.group[name].shape[0] if name in self.names else 0
