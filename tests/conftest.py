"""Shared fixtures: small seeded GPTs and token batches; and the backend the suite compiles with."""

import os

import numpy as np
import pytest

import graphgpt
from graphgpt import compiler, trace_entry

# The suite compiles with the NumPy backend, the reference, unless a test names another: its checks that compiled
# equals eager bit for bit are the reference's contract. The generated kernels (the default where numba is
# installed) are held to the reference within a stated bound by tests/test_numba_*.py and the random programs of
# tests/test_random_programs.py, and the default's choice by tests/test_numba_backend.py. The variable reaches the
# graphgpt commands the tests start too; GRAPHGPT_BACKEND=numba pytest runs the whole suite on generated kernels,
# a way to look rather than a gate: the reference's bit-for-bit checks against eager (NaN payloads included)
# and the texts that list kernels differ there by design (59 tests on one machine).
os.environ.setdefault("GRAPHGPT_BACKEND", "numpy")


def make_gpt(vocab=17, embed=12, layers=2, heads=3, max_seq_len=16, seed=0):
    graphgpt.manual_seed(seed)
    return graphgpt.nn.GPT(vocab, embed, layers, heads, max_seq_len=max_seq_len)


def make_tokens(vocab, batch, seq_len, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq_len))


@pytest.fixture
def small_gpt():
    return make_gpt()


def fuse_elementwise_at_any_size(graph):
    """The fusion pass without its size threshold, so small test graphs really fuse."""
    from graphgpt.passes.manager import PASSES

    return PASSES["fuse_elementwise"](graph, min_elements=1)


@pytest.fixture
def traces(monkeypatch):
    """Counts traces: forward compiles call compiler.trace, training steps compiler.trace_loss (which calls trace)."""
    counts = {"forward": 0, "training step": 0}
    trace, trace_loss = compiler.trace, compiler.trace_loss

    def counting_trace(*args, **kwargs):
        counts["forward"] += 1
        return trace(*args, **kwargs)

    def counting_trace_loss(*args, **kwargs):
        counts["training step"] += 1
        counts["forward"] -= 1  # its inner trace() is not a forward
        return trace_loss(*args, **kwargs)

    monkeypatch.setattr(compiler, "trace", counting_trace)
    monkeypatch.setattr(trace_entry, "trace", counting_trace)  # the trace inside trace_loss
    monkeypatch.setattr(compiler, "trace_loss", counting_trace_loss)
    return counts


@pytest.fixture
def recompile_explanations(monkeypatch):
    """graphgpt.explain_recompiles, off for the test (no environment variable either) and put back after it."""
    monkeypatch.delenv("GRAPHGPT_EXPLAIN_RECOMPILES", raising=False)
    previous = graphgpt.explain_recompiles(None)
    yield graphgpt.explain_recompiles
    graphgpt.explain_recompiles(previous)
