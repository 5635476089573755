"""Sampling text from a trained GPT: temperature and top-k, autoregressively, the context cut to max_seq_len; the
prompts of `graphgpt train` and `graphgpt generate` (one given, or one per line of a file), checked against the
model before anything runs, and each sample shown under a header naming its prompt."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..nn import GPT
from ..tensor import Tensor
from ..tracing import no_grad
from .corpus import DataError, Vocabulary, read_utf8


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
    tokens = list(check_prompt(prompt, vocabulary, model.max_seq_len))
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


def check_prompt(prompt: str, vocabulary: Vocabulary, max_seq_len: int, what: str = "the prompt") -> np.ndarray:
    """The tokens of `prompt`, or DataError if it is empty, longer than the model's context or holds a character
    outside the vocabulary."""
    if not prompt:
        raise DataError(f"{what} is empty: give at least one character to continue")
    if len(prompt) > max_seq_len:
        raise DataError(f"{what} has {len(prompt)} characters, more than the model's max_seq_len {max_seq_len}")
    return vocabulary.encode(prompt, what=what)


def read_prompts(path: str) -> list[str]:
    """The prompts of a --prompt-file: one per line, blank lines skipped (a line's leading spaces are kept:
    indentation is part of a prompt of code)."""
    prompts = [line for line in read_utf8(path, "--prompt-file").split("\n") if line.strip()]
    if not prompts:
        raise DataError(f"--prompt-file {path} holds no prompt: give one prompt per non-empty line")
    return prompts


def checked_prompts(prompt, prompt_file, vocabulary: Vocabulary, max_seq_len: int) -> list[str]:
    """The prompts given by --prompt or --prompt-file (an empty list if neither), each checked by check_prompt,
    so a bad one is refused before a run rather than after it."""
    prompts = [prompt] if prompt is not None else read_prompts(prompt_file) if prompt_file is not None else []
    for number, text in enumerate(prompts, start=1):
        check_prompt(text, vocabulary, max_seq_len,
                     what="--prompt" if prompt is not None else f"prompt {number} of --prompt-file {prompt_file}")
    return prompts


def sample_header(number: int, count: int, prompt: str) -> str:
    """'--- sample 1 of 2, prompt 'def ' ---': the prompt as a Python literal, so spaces and newlines show."""
    return f"--- sample {number} of {count}, prompt {prompt!r} ---"
