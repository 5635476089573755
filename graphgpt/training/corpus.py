"""Text to train on, its character vocabulary, batches of windows, and the unigram baseline.

The default corpus is text every machine with Python has: the source of a fixed list of standard-library modules,
read at run time, so two runs on two machines with the same Python see the same characters.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..ir.untrusted import read_regular_file

# A fixed, sorted list of standard-library sources (those missing on a given Python are skipped).
DEFAULT_MODULES = (
    "abc.py", "argparse.py", "bisect.py", "calendar.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py",
    "difflib.py", "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "pathlib.py", "pprint.py", "random.py", "shutil.py", "string.py",
    "textwrap.py", "threading.py", "typing.py",
)
DEFAULT_CORPUS_CHARACTERS = 1_500_000
MAX_TEXT_BYTES = 256 * 1024 * 1024  # as int64 tokens, 2 GiB: more than a character-level GPT on NumPy trains on


class DataError(ValueError):
    """Training or prompt text that cannot be used (unreadable, too short, characters outside a vocabulary)."""


def default_corpus() -> str:
    """Concatenated standard-library sources, up to DEFAULT_CORPUS_CHARACTERS characters."""
    library = os.path.dirname(os.__file__)
    parts = []
    for relative in DEFAULT_MODULES:
        try:
            parts.append(read_utf8(os.path.join(library, relative), "standard-library source"))
        except DataError:  # missing or odd on this Python: skipped, as the list says
            continue
    text = "\n".join(parts)[:DEFAULT_CORPUS_CHARACTERS]
    if len(text) < 10_000:
        raise DataError(f"found only {len(text)} characters of standard-library source under {library}; "
                        f"pass --data FILE")
    return text


def read_text(path: Optional[str]) -> str:
    """The file's text (UTF-8), or the default corpus when `path` is None."""
    if path is None:
        return default_corpus()
    return read_utf8(path, "--data")


def read_utf8(path: str, what: str) -> str:
    """A regular file of at most MAX_TEXT_BYTES as UTF-8 text, with newlines as open() in text mode gives them
    (CRLF and CR become LF), so a vocabulary does not depend on how the file was read."""
    raw = read_regular_file(path, MAX_TEXT_BYTES, lambda reason: DataError(f"cannot read {what} {path}: {reason}"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Vocabulary:
    """Characters <-> token ids, in sorted order."""

    def __init__(self, characters):
        self.characters = list(characters)
        self.index = {character: position for position, character in enumerate(self.characters)}
        if len(self.index) != len(self.characters) or any(len(c) != 1 for c in self.characters):
            raise DataError("a vocabulary is a list of distinct single characters")

    @classmethod
    def of(cls, text: str) -> "Vocabulary":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.characters)

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise DataError(f"{what} has {len(unknown)} character(s) outside the vocabulary of "
                            f"{len(self)}: {shown}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, tokens) -> str:
        return "".join(self.characters[int(t)] for t in tokens)


def split(tokens: np.ndarray, validation_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The first part for training, the last `validation_fraction` held out."""
    cut = int(len(tokens) * (1 - validation_fraction))
    return tokens[:cut], tokens[cut:]


class BatchSampler:
    """Random windows of seq_len + 1 tokens (inputs and next-token targets), from a seeded generator whose state
    can be saved and restored, so a resumed run draws exactly the batches an uninterrupted one would."""

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int, seed: int):
        if len(tokens) <= seq_len + 1:
            raise DataError(f"need more than {seq_len + 1} tokens to draw windows of {seq_len}, got {len(tokens)}")
        self.tokens, self.batch, self.seq_len = tokens, batch, seq_len
        self.generator = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.generator.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch)
        # Two gathers into C-ordered arrays (what a compiled step takes as they are): a Python loop over the
        # windows and views of them, which the step then copied, took 25 us of each ~4 ms step of graphgpt train.
        positions = starts[:, None] + np.arange(self.seq_len)
        return self.tokens[positions], self.tokens[positions + 1]

    @property
    def state(self) -> dict:
        return self.generator.bit_generator.state

    @state.setter
    def state(self, value: dict) -> None:
        self.generator.bit_generator.state = value


def unigram_cross_entropy(train: np.ndarray, validation: np.ndarray, vocab_size: int) -> float:
    """Nats per character of the validation text under character frequencies of the training text (add-one
    smoothing, so a character unseen in training still has a probability)."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probabilities = np.log(counts / counts.sum())
    return float(-log_probabilities[validation].mean())
