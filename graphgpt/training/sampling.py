"""Sampling text from a trained GPT: temperature and top-k, autoregressively, the context cut to max_seq_len; the
prompts of `graphgpt train` and `graphgpt generate` (one given, or one per line of a file), checked against the
model before anything runs, and each sample shown under a header naming its prompt."""

from __future__ import annotations

import math
import numbers
from typing import Optional

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

    Each step runs the model eagerly on the last max_seq_len tokens (no cache: the whole context every time),
    then draws the next token with next_token. A prompt with characters outside the vocabulary is refused, as are
    a negative length, a temperature that is not a finite positive number, a negative top_k or seed."""
    check_sampling(length, temperature, top_k, seed)
    tokens = list(check_prompt(prompt, vocabulary))
    generator = np.random.default_rng(seed)
    with no_grad():
        for _ in range(length):
            context = np.array([tokens[-model.max_seq_len:]], dtype=np.int64)
            tokens.append(next_token(model(Tensor(context)).data[0, -1], temperature, top_k, generator))
    return vocabulary.decode(tokens)


def check_sampling(length: int, temperature: float, top_k: int, seed: int) -> None:
    """DataError unless `length` is a whole number >= 0, temperature a finite number > 0, top_k and seed whole
    numbers >= 0."""
    if not (_is_whole(length) and length >= 0):
        raise DataError(f"length must be a whole number, 0 or more, got {length!r}")
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a finite number above 0, got {temperature!r}")
    if not (_is_whole(top_k) and top_k >= 0):
        raise DataError(f"top-k must be 0 (all) or a positive whole number, got {top_k!r}")
    if not (_is_whole(seed) and seed >= 0):
        raise DataError(f"the sampling seed must be a whole number, 0 or more, got {seed!r}")


def next_token(logits: np.ndarray, temperature: float, top_k: int, generator: np.random.Generator) -> int:
    """One token drawn from the last position's `logits` (vocab_size,): divided by `temperature` (in float64),
    cut to the `top_k` largest (0 keeps all), softmaxed; top_k=1 is greedy decoding, the argmax (the first of
    tied maxima), drawing nothing. Every decoder (eager, compiled, cached) draws through here, so the same logits
    and seed give the same tokens."""
    if top_k == 1:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64)
    scaled /= temperature
    if 0 < top_k < len(scaled):
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled[scaled < cutoff] = -np.inf
    scaled -= scaled.max()
    probabilities = np.exp(scaled, out=scaled)
    total = probabilities.sum()
    if not math.isfinite(total):  # NaN or infinite logits: there is no distribution to draw from
        raise DataError(f"cannot sample from logits holding NaN or infinity ({int(np.isnan(logits).sum())} NaN, "
                        f"{int(np.isinf(logits).sum())} infinite of {len(logits)})")
    probabilities /= total
    # Generator.choice(len(p), p=p)'s own steps, without its checks of p (a third of its cost): the same draw.
    cumulative = probabilities.cumsum()
    cumulative /= cumulative[-1]
    return int(cumulative.searchsorted(generator.random(), side="right"))


def check_prompt(prompt: str, vocabulary: Vocabulary, what: str = "the prompt") -> np.ndarray:
    """The tokens of `prompt`, or DataError if it is empty or holds a character outside the vocabulary. A prompt
    longer than the model's context is not refused: generation conditions on its last max_seq_len tokens, as
    nanoGPT's does (see context_note)."""
    if not prompt:
        raise DataError(f"{what} is empty: give at least one character to continue")
    return vocabulary.encode(prompt, what=what)


def context_note(prompt_length: int, max_seq_len: int, what: str = "the prompt") -> Optional[str]:
    """What a user should know before generating from a prompt this long, or None."""
    if prompt_length <= max_seq_len:
        return None
    return (f"{what} has {prompt_length} tokens, more than the model's max_seq_len {max_seq_len}: generation "
            f"conditions on its last {max_seq_len}")


def read_prompts(path: str) -> list[str]:
    """The prompts of a --prompt-file: one per line, blank lines skipped (a line's leading spaces are kept:
    indentation is part of a prompt of code)."""
    prompts = [line for line in read_utf8(path, "--prompt-file").split("\n") if line.strip()]
    if not prompts:
        raise DataError(f"--prompt-file {path} holds no prompt: give one prompt per non-empty line")
    return prompts


def checked_prompts(prompt, prompt_file, vocabulary: Vocabulary) -> list[str]:
    """The prompts given by --prompt or --prompt-file (an empty list if neither), each checked by check_prompt,
    so a bad one is refused before a run rather than after it."""
    prompts = [prompt] if prompt is not None else read_prompts(prompt_file) if prompt_file is not None else []
    for number, text in enumerate(prompts, start=1):
        check_prompt(text, vocabulary,
                     what="--prompt" if prompt is not None else f"prompt {number} of --prompt-file {prompt_file}")
    return prompts


def sample_header(number: int, count: int, prompt: str) -> str:
    """'--- sample 1 of 2, prompt 'def ' ---': the prompt as a Python literal, so spaces and newlines show."""
    return f"--- sample {number} of {count}, prompt {prompt!r} ---"
