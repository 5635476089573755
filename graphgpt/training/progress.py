"""The progress display of `graphgpt train`, drawn by tqdm: elapsed time and ETA, ms per step, a smoothed loss,
tokens per second, and the FLOP rate achieved against the float32 matmul peak measured at start-up (nanoGPT's
MFU, with the peak measured on this machine rather than taken from a GPU's datasheet).

On a terminal the bar is rewritten in place; elsewhere (a log, CI) the same line is printed every tenth of the run.
"""

from __future__ import annotations

import os
import time
from typing import Optional, TextIO

import numpy as np
from tqdm import tqdm

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
SMOOTHING = 0.9  # weight of the past in the moving averages of loss and step time (nanoGPT's MFU uses 0.9 too)
PEAK_MATRIX_SIZE = 1024
PEAK_SECONDS = 0.2


def measure_matmul_peak(size: int = PEAK_MATRIX_SIZE, seconds: float = PEAK_SECONDS) -> float:
    """FLOP/s of this machine's best float32 size x size matrix product, timed for about `seconds` (the first,
    warming, product is not counted)."""
    generator = np.random.default_rng(0)
    a, b = (generator.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    result = np.empty((size, size), np.float32)
    np.matmul(a, b, out=result)
    best = float("inf")
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        before = time.perf_counter()
        np.matmul(a, b, out=result)
        best = min(best, time.perf_counter() - before)
    return 2.0 * size ** 3 / best


def step_flops(compiled) -> int:
    """FLOPs of one run of a compiled step: every graph that runs (passes/analysis.py graph_flops of its last
    stage), times the copies of it that run (a data-parallel shard graph runs once per shard)."""
    return sum(entry.stages[-1].flops * entry.runs for entry in compiled.program.graphs)


class MovingAverage:
    """An exponential moving average, debiased as Adam's moments are, so the first values are not pulled to 0."""

    def __init__(self, smoothing: float = SMOOTHING):
        self.smoothing, self.total, self.count = smoothing, 0.0, 0

    def add(self, value: float) -> float:
        self.total = self.smoothing * self.total + (1.0 - self.smoothing) * value
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        return self.total / (1.0 - self.smoothing ** self.count) if self.count else float("nan")


def throughput(tokens_per_step: int, flops_per_step: int, seconds_per_step: float,
               peak_flops: Optional[float]) -> str:
    """'41.2 ms/step, 24.9k tok/s, 1.90 GFLOP/s (7.1% of peak)'; the share is left out without a peak."""
    rate = flops_per_step / seconds_per_step
    shown = (f"{seconds_per_step * 1000:.1f} ms/step, {tokens_per_step / seconds_per_step / 1000:.1f}k tok/s, "
             f"{rate / 1e9:.2f} GFLOP/s")
    return shown + (f" ({100 * rate / peak_flops:.1f}% of peak)" if peak_flops else "")


def _terminal_columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a file descriptor (a test's stand-in), or not a terminal
        return 0


class Progress:
    """The bar of a run of steps first_step+1..total; update() after each step with its loss and seconds."""

    def __init__(self, total: int, out: TextIO, enabled: bool, first_step: int = 0, tokens_per_step: int = 0,
                 flops_per_step: int = 0, peak_flops: Optional[float] = None):
        self.total, self.out, self.enabled = total, out, enabled
        self.tokens_per_step, self.flops_per_step, self.peak_flops = tokens_per_step, flops_per_step, peak_flops
        self.live = enabled and out.isatty()
        self.loss, self.seconds = MovingAverage(), MovingAverage()
        self.first_step = first_step
        self.started = time.perf_counter()
        # Follow the terminal's size as it changes; one that reports none (0 x 0, as some pseudo-terminals do)
        # would get an empty bar, or none at all (tqdm hides bars below the last row): assume 120 x 24 there.
        sized = _terminal_columns(out) > 0 if self.live else False
        self.bar = tqdm(total=total, initial=first_step, file=out, bar_format=BAR_FORMAT, leave=True,
                        dynamic_ncols=sized, ncols=None if sized else 120,
                        nrows=None if sized else 24) if self.live else None

    def postfix(self) -> str:
        return f"loss {self.loss.value:.3f}, " + throughput(self.tokens_per_step, self.flops_per_step,
                                                             self.seconds.value, self.peak_flops)

    def update(self, step: int, loss: float, seconds: float) -> None:
        self.loss.add(loss)
        self.seconds.add(seconds)
        if not self.enabled:
            return
        if self.live:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(step - self.bar.n)
        elif step == self.total or step % max(1, self.total // 10) == 0:
            line = tqdm.format_meter(step, self.total, time.perf_counter() - self.started, bar_format=BAR_FORMAT,
                                     postfix=self.postfix(), ncols=120, initial=self.first_step,
                                     ascii=True)  # a log file's reader may not take Unicode blocks
            self.out.write(line + "\n")

    def write(self, line: str) -> None:
        """A line above the bar (a validation loss), leaving the bar intact below it."""
        if self.live:
            self.bar.write(line, file=self.out)
        else:
            self.out.write(line + "\n")

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
