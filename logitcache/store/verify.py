"""`verify` (every block's marker, checksum and raw decoded values) and `inspect`'s summary."""
from __future__ import annotations

import numpy as np

from ..errors import CacheCorruptError
from .cache import CacheStore
from .fetch import read_ahead
from .ids import token_dtype


def check_decoded(block: int, ids: np.ndarray, probs: np.ndarray, vocab_size: int, sum_bound: float) -> str | None:
    """A problem with a block's raw decoded values (ids (n, T, K), probs (n, T, K) before any
    normalisation), or None. `sum_bound` is the code's largest honest raw sum (codecs: sum_bound)."""
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size:
        return f"block {block}: id outside the vocabulary"
    if (np.diff(ids, axis=-1) < 0).any():
        return f"block {block}: ids not ascending after decode"
    if not np.isfinite(probs).all() or (probs < 0).any():
        return f"block {block}: non-finite or negative probability"
    worst = float(probs.sum(-1).max(initial=0.0))
    if worst > sum_bound:
        return f"block {block}: a position's decoded probabilities sum to {worst:.4f}, above {sum_bound:.4f} (the code's bound)"
    return None


def verify_cache(path, progress=None, ahead: int = 8) -> list[str]:
    """Full integrity check (blocks fetched `ahead` at a time). Returns one message per faulty block
    (empty list: the cache is sound)."""
    store = CacheStore(path)
    layout = store.layout
    sum_bound = store.code.sum_bound(layout.k)
    done = store.done_mask()
    problems = {b: f"block {b}: not done" for b in range(layout.n_blocks) if not done[b]}  # block -> message
    if progress:
        progress.start("verify", layout.n_blocks)
        progress.update(len(problems))
    for block, stored in read_ahead(store.read_checked_block, np.flatnonzero(done).tolist(), ahead=ahead):
        if progress:
            progress.update(1)
        if isinstance(stored, CacheCorruptError):
            problems[block] = str(stored)
        elif isinstance(stored, Exception):
            raise stored
        else:
            _, ids, probs = store.decode_raw(stored)[:3]
            problem = check_decoded(block, ids, probs, layout.vocab_size, sum_bound)
            if problem:
                problems[block] = problem
    if progress:
        progress.finish()
    return [problems[b] for b in sorted(problems)]


def cache_summary(path) -> dict:
    """What `inspect` shows: attributes, blocks done, bytes per token on disk and raw."""
    store = CacheStore(path)
    layout, attrs = store.layout, store.attrs
    sizes = store.bytes_on_disk()
    tokens = max(1, layout.n_rows * layout.seq_len)
    target_bytes = sum(sizes[n] for n in layout.block_arrays if n != "tokens")
    raw_per_token = layout.k * (
        np.dtype(token_dtype(layout.vocab_size)).itemsize + store.code.storage_dtype.itemsize
        + (2 if layout.with_weights else 0)
    )
    return {
        "path": store.path,
        "attrs": attrs,
        "blocks_done": int(store.done_mask().sum()),
        "n_blocks": layout.n_blocks,
        "bytes_on_disk": sum(sizes.values()),
        "bytes_per_token": target_bytes / tokens,
        "raw_bytes_per_token": float(raw_per_token),
        "compression_ratio": raw_per_token / max(target_bytes / tokens, 1e-9),
        "full_logit_bytes_per_token": 4.0 * layout.vocab_size,
        "sizes": sizes,
    }
