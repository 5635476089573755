"""Sampling text from a trained GPT: temperature and top-k, autoregressively, the context cut to max_seq_len."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..nn import GPT
from ..tensor import Tensor
from ..tracing import no_grad
from .corpus import DataError, Vocabulary


def _is_whole(value) -> bool:
    """An integer, Python's or NumPy's, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def sample(model: GPT, vocabulary: Vocabulary, prompt: str, length: int, temperature: float = 1.0,
           top_k: int = 0, seed: int = 0) -> str:
    """`prompt` followed by `length` sampled characters.

    Each step runs the model eagerly on the last max_seq_len tokens, divides the last position's logits by
    `temperature`, keeps the `top_k` largest (0 keeps all), and draws from the softmax. A prompt longer than
    max_seq_len or with characters outside the vocabulary is refused, as are a negative length, a temperature that
    is not a finite positive number, a negative top_k or seed."""
    if not (_is_whole(length) and length >= 0):
        raise DataError(f"length must be a whole number of characters, 0 or more, got {length!r}")
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a finite number above 0, got {temperature!r}")
    if not (_is_whole(top_k) and top_k >= 0):
        raise DataError(f"top-k must be 0 (all) or a positive whole number, got {top_k!r}")
    if not (_is_whole(seed) and seed >= 0):
        raise DataError(f"the sampling seed must be a whole number, 0 or more, got {seed!r}")
    if not prompt:
        raise DataError("the prompt is empty: give at least one character to continue")
    if len(prompt) > model.max_seq_len:
        raise DataError(f"the prompt has {len(prompt)} characters, more than the model's max_seq_len "
                        f"{model.max_seq_len}")
    tokens = list(vocabulary.encode(prompt, what="the prompt"))
    generator = np.random.default_rng(seed)
    with no_grad():
        for _ in range(length):
            context = np.array([tokens[-model.max_seq_len:]], dtype=np.int64)
            logits = model(Tensor(context)).data[0, -1].astype(np.float64) / temperature
            if 0 < top_k < len(logits):
                cutoff = np.partition(logits, -top_k)[-top_k]
                logits = np.where(logits >= cutoff, logits, -np.inf)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            tokens.append(int(generator.choice(len(probabilities), p=probabilities)))
    return vocabulary.decode(tokens)
