"""log-uB: round(-log(p) / step), 2^B levels over 16 nats, stored as uint8.

The entropy coder drops the unused high bits. Rounding in log space costs about step^2 / 24 nats of
KL per kept entry; p below e^-16 clips to e^-16.
"""
from __future__ import annotations

import functools

import numpy as np

from .base import ProbCode

LOG_RANGE_NATS = 16.0


class LogCode(ProbCode):
    storage_dtype = np.dtype(np.uint8)

    def __init__(self, name: str, levels: int):
        self.name, self.levels = name, levels
        self.step = LOG_RANGE_NATS / (levels - 1)

    def encode(self, probs: np.ndarray) -> np.ndarray:
        top = self.levels - 1
        with np.errstate(divide="ignore"):
            codes = np.rint(-np.log(probs.astype(np.float64)) / self.step)
        return np.clip(np.nan_to_num(codes, nan=top, posinf=top), 0, top).astype(np.uint8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return self._table()[stored]

    @functools.cache
    def _table(self) -> np.ndarray:
        return np.exp(-np.arange(256, dtype=np.float32) * np.float32(self.step))

    def recipe(self) -> str:
        return (f"p = exp(-float32(topk_probs) * {self.step!r})  "
                f"# step = {LOG_RANGE_NATS}/{self.levels - 1} nats")

    def sum_bound(self, k: int) -> float:
        # each p is rounded by at most a factor exp(step / 2); p below e^-16 is raised to e^-16
        return float(np.exp(self.step / 2)) * (1.0 + 1e-4) + k * float(np.exp(-LOG_RANGE_NATS))
