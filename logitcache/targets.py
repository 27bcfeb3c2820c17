"""One named schema for a cache's rows, from the teachers through the store's writer and reader to the
loader and the losses (docs/architecture.md, "Targets"). numpy only: every layer may import it.

`Targets` holds the arrays of n cache rows by name; a field is None where the cache has no such array.
`batch_arrays` turns it into the batch dict every loss reads (`BATCH_KEYS`): that dict is the contract
between the data side (the loader, `logitcache.torch.CacheDataset`) and the losses.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class Targets:
    """n cache rows by name. Read from a cache (open_cache): int64 ids, float32 probabilities normalised
    (a position sums to at most 1; the rest is the tail), each position sorted by decreasing probability
    unless read in id order. On the way into the store (dump) the same fields, in the device's dtypes.
    ids and probs are None only for a tokens-only read."""

    tokens: np.ndarray  # (n, T) the input chunks
    ids: np.ndarray | None = None  # (n, T, K) the kept (top-k, sampled or mass-chosen) ids
    probs: np.ndarray | None = None  # (n, T, K) their probabilities at the cache's temperature; 0 in padding slots
    weights: np.ndarray | None = None  # (n, T, K) sampled targets only: importance weights, same order as ids
    mass_count: np.ndarray | None = None  # (n, T) mass targets only: kept ids per position; slots past it are
    #                                       padding (id 0, p 0), which the losses count as tail
    teacher_count: np.ndarray | None = None  # (n, T) uint8, a teacher on a tokenizer of its own only: teachers
    #                                          aligned at each position (0: no target; CE only there)

    @property
    def n_rows(self) -> int:
        return int(self.tokens.shape[0])

    def rows(self, index, copy: bool = False) -> "Targets":
        """The same fields at rows `index` (a slice, an int array or a bool mask over n); `copy`: arrays of
        their own, so the source's memory can go."""
        return Targets(**{name: a[index].copy() if copy else a[index] for name, a in self.arrays().items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """{field: array} for the fields present."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def concat(cls, parts: "list[Targets]") -> "Targets":
        """Rows of several parts one after another (every part with the same fields present)."""
        first = parts[0].arrays()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in first})


# the batch dict's keys (every loss reads these): Targets field -> batch key
BATCH_KEYS = {"tokens": "input_ids", "ids": "topk_ids", "probs": "topk_probs", "weights": "sample_weights",
              "mass_count": "mass_count", "teacher_count": "teacher_count"}
FIELD_OF_KEY = {key: field for field, key in BATCH_KEYS.items()}


def batch_arrays(targets: Targets) -> dict[str, np.ndarray]:
    """{batch key: array}: input_ids (B, T), topk_ids (B, T, K), topk_probs (B, T, K), and where the cache has
    them sample_weights (B, T, K), mass_count (B, T), teacher_count (B, T)."""
    return {BATCH_KEYS[name]: array for name, array in targets.arrays().items()}


def from_batch_arrays(batch: dict) -> Targets:
    """The inverse of `batch_arrays` (keys it does not know, such as labels, are left out)."""
    return Targets(**{FIELD_OF_KEY[key]: value for key, value in batch.items() if key in FIELD_OF_KEY})
