"""BLAS threads per run (passes/blas_threads.py): a graph too small to share its GEMMs runs on one BLAS thread and
says so in its report, a larger unsplit one keeps BLAS's threads, the limit is restored after every run (also
after a failing one), and runs from several threads at once leave the threads as they found them."""

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


def test_a_small_step_runs_on_one_blas_thread_and_a_large_one_keeps_them(monkeypatch):
    recorder = Recorder(blas_threads.BLAS_LIMIT)
    monkeypatch.setattr("graphgpt.passes.program.BLAS_LIMIT", recorder)
    before = blas_threads_now()
    assert before, "NumPy's BLAS was not found by threadpoolctl"
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 2, 5)
    small = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    assert small.program.one_blas_thread and "BLAS: one thread" in small.report()
    small.run(tokens, tokens)
    assert recorder.inside == [[1] * len(before)] and blas_threads_now() == before
    monkeypatch.setattr("graphgpt.passes.program.SMALL_RUN_FLOPS", 0)  # as if every graph were large
    large = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    large.run(tokens, tokens)
    assert not large.program.one_blas_thread and len(recorder.inside) == 1 and "BLAS: one" not in large.report()


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
