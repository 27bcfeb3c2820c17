"""log-uB: round(-log(p) / step), 2^B levels over 16 nats; uint8 for B <= 8, uint16 above. log-sN: a step of
exactly 1/N nat (16 N + 1 levels, uint16), for a fidelity between two powers of two.

Rounding in log space costs about step^2 / 24 nats of KL per position (the same at every probability,
and unchanged by renormalising the kept entries, which only shifts every log p alike); p below e^-16
clips to e^-16. The entropy coder drops the unused high bits of the 8-bit codes; the 16-bit codes are
byte-shuffled before zstd (Compression.wide_probs), which does the same for their high bytes
(docs/benchmarks.md compares each code's bytes and KL with Megatron's and DistillKit's formats).
"""
from __future__ import annotations

import functools

import numpy as np

from .base import ProbCode

LOG_RANGE_NATS = 16.0


class LogCode(ProbCode):
    def __init__(self, name: str, levels: int):
        self.name, self.levels = name, levels
        self.step = LOG_RANGE_NATS / (levels - 1)
        self.storage_dtype = np.dtype(np.uint8 if levels <= 256 else np.uint16)

    @property
    def help(self) -> str:
        return "codes of log p, 1 byte" if self.storage_dtype.itemsize == 1 else "codes of log p, 2 bytes: finer"

    def encode(self, probs: np.ndarray) -> np.ndarray:
        top = self.levels - 1
        with np.errstate(divide="ignore"):
            codes = np.rint(-np.log(probs.astype(np.float64)) / self.step)
        return np.clip(np.nan_to_num(codes, nan=top, posinf=top), 0, top).astype(self.storage_dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return self._table()[stored]

    @functools.cache
    def _table(self) -> np.ndarray:
        """(2^bits of the storage dtype,) float32: every storable code's probability, as the recipe says
        (codes above levels - 1 never come from encode; they decode below e^-16)."""
        codes = np.arange(1 << (8 * self.storage_dtype.itemsize), dtype=np.float32)
        return np.exp(-codes * np.float32(self.step))

    def recipe(self) -> str:
        return (f"p = exp(-float32(topk_probs) * {self.step!r})  "
                f"# step = {LOG_RANGE_NATS}/{self.levels - 1} nats")

    def sum_bound(self, k: int) -> float:
        # each p is rounded by at most a factor exp(step / 2); p below e^-16 is raised to e^-16
        return float(np.exp(self.step / 2)) * (1.0 + 1e-4) + k * float(np.exp(-LOG_RANGE_NATS))
