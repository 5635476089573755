"""Timing contenders side by side: every repetition runs each contender once, in a fresh random order, so a busy
spell of a shared machine falls on all of them alike rather than on whichever ran during it. One place for the
loop that graphgpt compare and the benchmarks share.

    times = interleaved_times({"eager": step_eager, "compiled": step_compiled}, repeats=7)
    statistics.median(times["compiled"])
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np


def interleaved_times(runs: Mapping[str, Callable[[], object]], repeats: int, warm_each: bool = False,
                      seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` per contender, in a fresh random order each repetition (a fixed cycle would
    always put the same contender after the one whose worker threads keep spinning). `warm_each`: run each
    contender once untimed right before its timed run, so it starts warm and absorbs what the previous one left
    running, as consecutive steps of a training loop would."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    shuffler = np.random.default_rng(seed)
    for _ in range(repeats):
        for name in shuffler.permutation(list(runs)):
            if warm_each:
                runs[name]()
            started = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - started)
    return times
