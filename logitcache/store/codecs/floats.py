"""float32 and float16: probabilities stored as they are (float16 rounds to 11 significant bits)."""
from __future__ import annotations

import numpy as np

from .base import ProbCode


class FloatCode(ProbCode):
    def __init__(self, name: str, dtype):
        self.name, self.storage_dtype = name, np.dtype(dtype)

    @property
    def help(self) -> str:
        return "p as floats"

    def encode(self, probs: np.ndarray) -> np.ndarray:
        return probs.astype(self.storage_dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32)

    def recipe(self) -> str:
        return "p = float32(topk_probs)"

    def sum_bound(self, k: int) -> float:
        # float16 rounds each entry by at most 2^-11 relative; 1e-4 covers float32 summation
        relative = 2.0 ** -11 if self.storage_dtype == np.float16 else 0.0
        return (1.0 + relative) * (1.0 + 1e-4)
