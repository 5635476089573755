"""Shared fixtures: small seeded GPTs and token batches."""

import numpy as np
import pytest

import graphgpt


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
