"""The public reader: `open_cache(path).read(start, stop)` -> plain ids and probabilities."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CacheCorruptError, LogitcacheError
from .cache import CacheStore
from .location import Location


class CacheReader:
    """Decoded, checksum-verified blocks of a complete cache (docs/architecture.md, "The public reader")."""

    def __init__(self, path: "str | Path | Location", require_complete: bool = True, verify: bool = True):
        self.store = CacheStore(path)
        path = self.store.path
        self.attrs = self.store.attrs
        self.layout = self.store.layout
        self.verify = verify
        if require_complete:
            done = self.store.done_mask()
            if not done.all():
                missing = int((~done).sum())
                raise LogitcacheError(
                    f"cache {path} is incomplete: {missing} of {len(done)} blocks not done "
                    f"(first: block {int(np.argmin(done))}); finish it with `logitcache dump --resume`"
                )

    def __len__(self) -> int:
        return self.layout.n_rows

    def read_block(self, block: int, targets: bool = True, by_prob: bool = True,
                   with_count: bool = False) -> tuple[np.ndarray, ...]:
        """One block decoded; checksum-verified first when `verify`. Only tokens when not `targets` (the
        whole block is still fetched when `verify`: its checksum covers every array); each position's
        entries by decreasing probability when `by_prob`, else by ascending id. `with_count` appends the
        teachers aligned at each position (n, T) uint8 (CacheStore.teacher_count; a cache without the
        array: every teacher everywhere)."""
        if with_count:
            stored = self.store.read_checked_block(block) if self.verify else self.store.read_stored_block(block)
            return (*self.store.decode(stored, by_prob), self.store.teacher_count(stored))
        if not targets and self.verify:
            return (self.store.read_checked_block(block)[0].astype(np.int64),)
        if not targets:
            start, stop = self.layout.block_range(block)
            try:
                return (self.store.arrays["tokens"][start:stop].astype(np.int64),)
            except Exception as exc:
                raise CacheCorruptError(f"block {block}: tokens cannot be decoded ({exc})", block) from None
        stored = self.store.read_checked_block(block) if self.verify else self.store.read_stored_block(block)
        return self.store.decode(stored, by_prob)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, ...]:
        """Rows start..stop: tokens (n, T) int64, ids (n, T, K) int64, probs (n, T, K) float32 sorted by
        decreasing probability and normalised (see the recipe), and for a sampled cache a fourth array,
        the importance weights (n, T, K) float32 in the same order."""
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise LogitcacheError(f"bad row range {start}:{stop} for a cache of {len(self)} rows")
        width = 4 if self.layout.with_weights else 3
        r = self.layout.block_rows
        parts = []
        for block in range(start // r, (stop - 1) // r + 1 if stop > start else start // r):
            b_start, _ = self.layout.block_range(block)
            decoded = self.read_block(block)
            lo, hi = max(start - b_start, 0), min(stop - b_start, decoded[0].shape[0])
            parts.append([a[lo:hi] for a in decoded])
        if not parts:
            t, k = self.layout.seq_len, self.layout.k
            empty = [np.zeros((0, t), np.int64), np.zeros((0, t, k), np.int64), np.zeros((0, t, k), np.float32),
                     np.zeros((0, t, k), np.float32)]
            return tuple(empty[:width])
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(width))


    def read_teacher_count(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of the teachers aligned at each position (n, T) uint8 (0: no teacher target there)."""
        stop = min(stop, len(self))
        r = self.layout.block_rows
        parts = []
        for block in range(start // r, (stop - 1) // r + 1 if stop > start else start // r):
            b_start, _ = self.layout.block_range(block)
            stored = self.store.read_checked_block(block) if self.verify else self.store.read_stored_block(block)
            counts = self.store.teacher_count(stored)
            parts.append(counts[max(start - b_start, 0):min(stop - b_start, counts.shape[0])])
        return np.concatenate(parts) if parts else np.zeros((0, self.layout.seq_len), np.uint8)


def open_cache(path: "str | Path | Location", verify: bool = True) -> CacheReader:
    """Open a complete cache for reading: a local path or a URL (s3://bucket/prefix/cache.zarr, gs://,
    file://); refuses an incomplete or foreign store with a clear error."""
    return CacheReader(path, require_complete=True, verify=verify)
