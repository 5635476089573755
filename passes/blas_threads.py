"""How many BLAS threads a run gets. The shards of a data-parallel step get one each (each shard's thread already
keeps a core busy: two threads each asking OpenBLAS for two would oversubscribe the cores). A graph too small to
split (SMALL_RUN_FLOPS) keeps BLAS's threads while the machine has cores to spare and gets one while it is busy
(LoadWatch): on an idle machine the README's training step (0.76 GFLOP) ran 19.4 ms with two BLAS threads against
22.4 ms with one, but with other work running the second thread spins waiting for a core: 75 against 41 ms
(interleaved medians; the tiny step: 5.2 against 5.6 idle, 32 against 22 loaded). OpenBLAS gave the same bits
with one thread and two on the GPT's GEMM shapes (it splits rows and columns, not the summed axis).

The limit is process-wide, as the BLAS thread pool it guards is, so it is counted: the first run to enter sets
one thread, the last to leave restores what was there, however runs of different programs interleave, from
whichever threads. The libraries are looked up once (threadpoolctl), on first use: NumPy's BLAS, which computes
graphgpt's matmuls, is loaded by then; a library loaded later (torch's, scipy's) is not graphgpt's and is left
alone. Entering and leaving then costs two calls into each.

The threads are set through the library's own call (set_blas_threads), not threadpoolctl's public
set_num_threads: since threadpoolctl 3.8 that one, for OpenBLAS on pthreads, acts only for the first Python thread
that used it while that thread lives, and is silently ignored from any other. A compiled step run from a second
thread after one run from the main thread then ran its shards on two BLAS threads each (four on two cores) and, on
OpenBLAS's Haswell kernel, rounded its GEMMs differently from the same step run from the main thread.
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

# A run of fewer FLOPs than this (one unsplit graph) runs on one BLAS thread while the machine is busy; a step this
# size or larger is split into shards when it can be (passes/program_build.py MIN_SPLIT_FLOPS), each on one BLAS
# thread anyway.
SMALL_RUN_FLOPS = 4 * 10**9
# The machine turns busy when the 1-minute load average exceeds its cores by BUSY_ABOVE (others' work on top of
# ours: our BLAS threads count in it too), and idle again when it falls below the cores less IDLE_BELOW (ours, on
# one thread, no longer has company). The gap keeps one thread's own lighter load from switching it back.
BUSY_ABOVE, IDLE_BELOW = 0.75, 0.25
LOAD_CHECK_SECONDS = 1.0  # the load average moves over a minute: looking more often would only cost time


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LoadWatch:
    """Whether the machine is busier than its cores, from the 1-minute load average with hysteresis, looked at
    at most once per LOAD_CHECK_SECONDS. Without a load average (not on Unix), never busy."""

    def __init__(self, cores: Optional[int] = None, load: Callable[[], tuple] = getattr(os, "getloadavg", None),
                 clock: Callable[[], float] = time.monotonic):
        self._cores = cores if cores is not None else available_cores()
        self._load, self._clock = load, clock
        self._lock = threading.Lock()
        self._busy, self._checked = False, -math.inf

    def busy(self) -> bool:
        with self._lock:
            now = self._clock()
            if self._load is not None and now - self._checked >= LOAD_CHECK_SECONDS:
                self._checked = now
                try:
                    load = self._load()[0]
                except OSError:
                    return self._busy
                if self._busy:
                    self._busy = load >= self._cores - IDLE_BELOW
                else:
                    self._busy = load > self._cores + BUSY_ABOVE
            return self._busy


class BlasLimit:
    """One BLAS thread while any run is inside `one_thread()`; restored when the last one leaves."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders = 0
        self._libraries = None  # threadpoolctl's controllers of the BLAS libraries, found on first use
        self._saved: list[tuple[object, int]] = []

    def blas_libraries(self) -> list:
        """threadpoolctl's controllers of the BLAS libraries this limit sets (found on first use)."""
        if self._libraries is None:
            from threadpoolctl import ThreadpoolController

            self._libraries = [library for library in ThreadpoolController().lib_controllers
                               if library.user_api == "blas"]
        return self._libraries

    @contextmanager
    def one_thread(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._saved = [(library, library.num_threads) for library in self.blas_libraries()]
                for library, _ in self._saved:
                    set_blas_threads(library, 1)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    for library, threads in self._saved:
                        set_blas_threads(library, threads)
                    self._saved = []


def set_blas_threads(library, threads: int) -> None:
    """Set a BLAS library's threads (a threadpoolctl controller's) from any Python thread: through its own call
    where threadpoolctl keeps one (`_real_set_num_threads`, which its public set_num_threads calls for the thread
    it lets act, see the module's docstring), else through the public one (before threadpoolctl 3.8, and other
    libraries than OpenBLAS, which act from every thread)."""
    getattr(library, "_real_set_num_threads", library.set_num_threads)(threads)


BLAS_LIMIT = BlasLimit()  # one per process, as the BLAS thread pools it guards
MACHINE_LOAD = LoadWatch()  # one per process: the machine's load is the same for every program
