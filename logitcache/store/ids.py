"""Kept ids: sorted ascending per position and stored as gaps (first id, then differences).

Small gaps have mostly-zero high bytes, which zstd then removes.
"""
from __future__ import annotations

import numpy as np


def token_dtype(vocab_size: int):
    """uint16 while every id fits, uint32 above 65,536 ids."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


def encode_ids(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, K) ids -> (gap-coded ids sorted ascending, the sort order to apply to the probs)."""
    order = np.argsort(ids, axis=-1, kind="stable")  # (n, T, K)
    sorted_ids = np.take_along_axis(ids, order, axis=-1).astype(np.int64)
    gaps = np.diff(sorted_ids, axis=-1, prepend=0)  # first id as is, then gaps (>= 1)
    return gaps.astype(token_dtype(vocab_size)), order


def decode_ids(gaps: np.ndarray) -> np.ndarray:
    """(n, T, K) gaps -> (n, T, K) int64 ids, ascending per position."""
    return np.cumsum(gaps.astype(np.int64), axis=-1)
