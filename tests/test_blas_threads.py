"""BLAS threads per run (passes/blas_threads.py): a graph too small to split runs on one BLAS thread while the
machine is busy and on BLAS's threads while it is idle (the load watch's hysteresis tested on its own), and says so
in its report; a larger unsplit one keeps BLAS's threads, the limit is restored after every run (also
after a failing one), it holds for a run from any thread, and runs from several threads at once leave the threads
as they found them."""

import threading

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from graphgpt.passes import blas_threads
from conftest import make_gpt, make_tokens


def blas_threads_now() -> list[int]:
    """The threads of the BLAS libraries the limit sets (NumPy's; one loaded later, such as torch's, is not
    graphgpt's and is left alone)."""
    return [library.num_threads for library in blas_threads.BLAS_LIMIT.blas_libraries()]


class Recorder:
    """A stand-in BLAS limit recording the threads BLAS had inside each run."""

    def __init__(self, real):
        self.real, self.inside = real, []

    def one_thread(self):
        recorder = self

        class Scope:
            def __enter__(self):
                self.scope = recorder.real.one_thread()
                self.scope.__enter__()
                recorder.inside.append(blas_threads_now())

            def __exit__(self, *exc):
                return self.scope.__exit__(*exc)

        return Scope()


class Busy:
    """A stand-in load watch."""

    def __init__(self, busy: bool):
        self.answer = busy

    def busy(self) -> bool:
        return self.answer


def test_a_small_step_runs_on_one_blas_thread_on_a_busy_machine_and_a_large_one_keeps_them(monkeypatch):
    recorder = Recorder(blas_threads.BLAS_LIMIT)
    monkeypatch.setattr("graphgpt.passes.program.BLAS_LIMIT", recorder)
    monkeypatch.setattr("graphgpt.passes.program.MACHINE_LOAD", Busy(True))
    before = blas_threads_now()
    assert before, "NumPy's BLAS was not found by threadpoolctl"
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 2, 5)
    small = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    assert small.program.one_blas_thread and "BLAS: one thread while the machine is busier" in small.report()
    assert "busy now: yes" in small.report()
    small.run(tokens, tokens)
    assert recorder.inside == [[1] * len(before)] and blas_threads_now() == before
    monkeypatch.setattr("graphgpt.passes.program.MACHINE_LOAD", Busy(False))  # idle: BLAS keeps its threads
    small.run(tokens, tokens)
    assert len(recorder.inside) == 1 and not small.program.one_blas_thread and "busy now: no" in small.report()
    monkeypatch.setattr("graphgpt.passes.program.MACHINE_LOAD", Busy(True))
    monkeypatch.setattr("graphgpt.passes.program.SMALL_RUN_FLOPS", 0)  # as if every graph were large
    large = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    large.run(tokens, tokens)
    assert not large.program.one_blas_thread and len(recorder.inside) == 1 and "BLAS: one" not in large.report()


def test_the_machine_turns_busy_above_its_cores_and_idle_below_them():
    """Hysteresis: on 2 cores busy above a load of 2.75, idle again below 1.75; looked at once a second."""
    now, load = [0.0], [1.0]
    watch = blas_threads.LoadWatch(cores=2, load=lambda: (load[0], 0.0, 0.0), clock=lambda: now[0])
    steps = [(1.0, False), (2.5, False), (2.8, True), (2.0, True), (1.8, True), (1.7, False), (2.7, False)]
    for value, busy in steps:
        now[0] += blas_threads.LOAD_CHECK_SECONDS
        load[0] = value
        assert watch.busy() == busy, (value, busy)
    load[0] = 9.0  # within the second: not looked at again
    assert watch.busy() is False
    assert blas_threads.LoadWatch(cores=2, load=None).busy() is False  # no load average: never busy


def test_the_threads_come_back_after_a_failing_run():
    before = blas_threads_now()
    with pytest.raises(RuntimeError):
        with blas_threads.BLAS_LIMIT.one_thread():
            assert blas_threads_now() == [1] * len(before)
            raise RuntimeError("a failing kernel")
    assert blas_threads_now() == before


def test_runs_from_several_threads_leave_the_threads_as_they_were():
    before = blas_threads_now()
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 2, 5)
    compiled = [graphgpt.compile(model, tokens) for _ in range(3)]  # each its own buffers: runs really overlap
    expected = compiled[0].run(tokens)
    failures = []

    def work(step):
        for _ in range(30):
            if not np.array_equal(step.run(tokens), expected):
                failures.append("a different result")

    workers = [threading.Thread(target=work, args=(step,)) for step in compiled]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures and blas_threads_now() == before


def test_a_split_step_run_from_a_second_thread_runs_its_shards_on_one_blas_thread(monkeypatch):
    """threadpoolctl 3.8 lets only the first Python thread that set OpenBLAS's threads set them again, ignoring the
    others: the limit must hold for a step run from a second thread after the main thread has set them."""
    libraries = blas_threads.BLAS_LIMIT.blas_libraries()
    before = blas_threads_now()
    for library in libraries:  # two threads to limit, set from this (the main) thread through threadpoolctl
        library.set_num_threads(2)
    try:
        recorder = Recorder(blas_threads.BLAS_LIMIT)
        monkeypatch.setattr("graphgpt.passes.sharded_run.BLAS_LIMIT", recorder)
        model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
        tokens = make_tokens(11, 2, 5)
        step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=2)
        worker = threading.Thread(target=step.run, args=(tokens, tokens))
        worker.start()
        worker.join()
        assert recorder.inside == [[1] * len(libraries)]
        assert blas_threads_now() == [2] * len(libraries)  # restored
    finally:
        for library, threads in zip(libraries, before):
            blas_threads.set_blas_threads(library, threads)
