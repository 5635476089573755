"""How many BLAS threads a run gets. Two places ask for one thread: the shards of a data-parallel step (each
shard's thread already keeps a core busy: two threads each asking OpenBLAS for two would oversubscribe the cores)
and a graph too small to gain from BLAS threads (SMALL_RUN_FLOPS). On a small step BLAS's second thread has
little to share and, on a busy machine, spins waiting for a core: the README's training step (0.76 GFLOP) ran
75 ms a step with two BLAS threads against 41 ms with one, the tiny one (0.18 GFLOP) 32 against 22 ms, measured
interleaved with the machine loaded (benchmarks/train_step.py --tiny measures it idle).

The limit is process-wide, as the BLAS thread pool it guards is, so it is counted: the first run to enter sets
one thread, the last to leave restores what was there, however runs of different programs interleave. The
libraries are looked up once (threadpoolctl), on first use: NumPy's BLAS, which computes graphgpt's matmuls, is
loaded by then; a library loaded later (torch's, scipy's) is not graphgpt's and is left alone. Entering and
leaving then costs two calls into each.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# A run of fewer FLOPs than this (one unsplit graph) runs on one BLAS thread; a step this size or larger is
# split into shards when it can be (passes/program_build.py MIN_SPLIT_FLOPS), each on one BLAS thread anyway.
SMALL_RUN_FLOPS = 4 * 10**9


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
                    library.set_num_threads(1)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    for library, threads in self._saved:
                        library.set_num_threads(threads)
                    self._saved = []


BLAS_LIMIT = BlasLimit()  # one per process, as the BLAS thread pools it guards
