"""The random generator behind parameter initialisation; `graphgpt.manual_seed(n)` makes models reproducible."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed parameter initialisation: the same seed builds the same model."""
    global _generator
    _generator = np.random.default_rng(seed)


def normal(std: float, shape: tuple[int, ...], dtype="float32") -> np.ndarray:
    return _generator.normal(0.0, std, shape).astype(dtype)
