"""The public reader: `open_cache(path).read(start, stop)` -> Targets (logitcache/targets.py): tokens, ids and
probabilities by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CacheCorruptError, LogitcacheError
from ..targets import Targets
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

    def read_block(self, block: int, targets: bool = True, by_prob: bool = True) -> Targets:
        """One block decoded as Targets (logitcache/targets.py); checksum-verified first when `verify`. Only
        tokens when not `targets` (ids and probs None; the whole block is still fetched when `verify`: its
        checksum covers every array); each position's entries by decreasing probability when `by_prob`, else
        by ascending id (a mass cache's padding, id 0 and p 0, then follows the kept ids)."""
        if not targets and self.verify:
            return Targets(self.store.read_checked_block(block)[0].astype(np.int64))
        if not targets:
            start, stop = self.layout.block_range(block)
            try:
                return Targets(self.store.arrays["tokens"][start:stop].astype(np.int64))
            except Exception as exc:
                raise CacheCorruptError(f"block {block}: tokens cannot be decoded ({exc})", block) from None
        stored = self.store.read_checked_block(block) if self.verify else self.store.read_stored_block(block)
        return self.store.decode(stored, by_prob)

    def read(self, start: int, stop: int) -> Targets:
        """Rows start..stop as Targets: tokens (n, T) int64, ids (n, T, K) int64, probs (n, T, K) float32 sorted
        by decreasing probability and normalised (see the recipe), and where the cache has them the importance
        weights (sampled targets; same order), mass_count (mass targets) and teacher_count."""
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise LogitcacheError(f"bad row range {start}:{stop} for a cache of {len(self)} rows")
        r = self.layout.block_rows
        first = min(start // r, self.layout.n_blocks - 1)
        last = (stop - 1) // r if stop > start else first  # an empty range still decodes one block: its shapes
        parts = []
        for block in range(first, last + 1):
            b_start, _ = self.layout.block_range(block)
            decoded = self.read_block(block)
            parts.append(decoded.rows(slice(max(start - b_start, 0), max(min(stop - b_start, decoded.n_rows), 0))))
        return Targets.concat(parts)


def open_cache(path: "str | Path | Location", verify: bool = True) -> CacheReader:
    """Open a complete cache for reading: a local path or a URL (s3://bucket/prefix/cache.zarr, gs://,
    file://); refuses an incomplete or foreign store with a clear error."""
    return CacheReader(path, require_complete=True, verify=verify)
