"""The random generator behind parameter initialisation; `graphgpt.manual_seed(n)` makes models reproducible.

Each thread has its own generator: `manual_seed` in one thread seeds the models that thread builds, whatever
other threads do meanwhile (one process-wide generator would interleave two threads' draws, so the same seed
would build different models). A thread that never seeds draws from an unseeded generator of its own.
"""

from __future__ import annotations

import threading

import numpy as np

_per_thread = threading.local()


def _generator() -> np.random.Generator:
    generator = getattr(_per_thread, "generator", None)
    if generator is None:
        generator = _per_thread.generator = np.random.default_rng()
    return generator


def manual_seed(seed: int) -> None:
    """Seed parameter initialisation in this thread: the same seed builds the same model."""
    _per_thread.generator = np.random.default_rng(seed)


def normal(std: float, shape: tuple[int, ...], dtype="float32") -> np.ndarray:
    return _generator().normal(0.0, std, shape).astype(dtype)
