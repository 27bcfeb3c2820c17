"""The interface of a probability code: encode (n, T, K) float -> stored, decode stored -> float32."""
from __future__ import annotations

import numpy as np


class ProbCode:
    """One probability encoding. Subclasses own encode, decode and the recipe a foreign reader follows."""

    name: str
    storage_dtype: np.dtype

    @property
    def help(self) -> str:
        """What the code stores, for the options' help (codes that say the same are listed together)."""
        raise NotImplementedError

    def encode(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored codes -> float32 probabilities exactly as `recipe()` says (no renormalisation)."""
        raise NotImplementedError

    def recipe(self) -> str:
        """The decode formula, as saved in the cache attributes."""
        raise NotImplementedError

    def sum_bound(self, k: int) -> float:
        """The largest raw decoded sum of K codes whose true probabilities sum to at most 1: above it,
        a position cannot have come from `encode` (verify reports it)."""
        raise NotImplementedError
