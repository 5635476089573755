"""Timing contenders side by side: every repetition runs each contender once, in a fresh random order, so a busy
spell of a shared machine falls on all of them alike rather than on whichever ran during it. One place for the
loop that graphgpt compare and the benchmarks share, and the spread of what it measured (median and interquartile
range), which says whether something else ran meanwhile.

    times = interleaved_times({"eager": step_eager, "compiled": step_compiled}, repeats=7)
    spread = spread_of(times["compiled"])     # spread.median, spread.low, spread.high (ms); spread.wide
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


def interleaved_times(runs: Mapping[str, Callable[[], object]], repeats: int, warm_each: bool = False,
                      seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` per contender, in a fresh random order each repetition (a fixed cycle would
    always put the same contender after the one whose worker threads keep spinning). `warm_each`: run each
    contender once untimed right before its timed run, so it starts warm and absorbs what the previous one left
    running, as consecutive steps of a training loop would."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)  # any hashable names: shuffled by index, as permuting a list of tuples would make an array
    shuffler = np.random.default_rng(seed)
    for _ in range(repeats):
        for name in (names[index] for index in shuffler.permutation(len(names))):
            if warm_each:
                runs[name]()
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return times


# A time whose interquartile range is more than this fraction of its median spread wide: something else ran while
# it was measured. Measured on a 2-core machine, graphgpt compare's 23 times over 7 interleaved runs: in a quiet
# spell their ranges were 7% of the median (the middle one) and 15% at most; with other work running, 25-45%
# typically, and more. A few wide times in a quiet spell are a noisy contender (threads, allocation); many at once,
# a busy machine (compare/report.py).
WIDE_SPREAD = 0.25


@dataclass(frozen=True)
class Spread:
    """Repeated timings of one thing, in milliseconds: the median and the interquartile range (first to third
    quartile), the half of the runs in the middle."""

    median: float
    low: float   # first quartile
    high: float  # third quartile
    runs: int

    @property
    def relative(self) -> float:
        """The interquartile range as a fraction of the median."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    @property
    def wide(self) -> bool:
        """Whether these runs spread wide (see WIDE_SPREAD): something else ran while they were timed."""
        return self.relative > WIDE_SPREAD

    def __str__(self) -> str:
        """'4.31 ms [4.20-4.52]': median, then first and third quartiles."""
        return f"{milliseconds(self.median)} ms [{milliseconds(self.low)}-{milliseconds(self.high)}]"


def milliseconds(value: float) -> str:
    """Two decimals below 10 ms, one below 100, whole milliseconds above: enough to compare, no more."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def spread_of(seconds: Sequence[float]) -> Spread:
    """The Spread of timings given in seconds (as interleaved_times returns them)."""
    if not seconds:
        raise ValueError("a spread needs at least one timing, got none")
    low, median, high = np.percentile(np.asarray(seconds, dtype=float) * 1e3, [25, 50, 75])
    return Spread(float(median), float(low), float(high), len(seconds))
