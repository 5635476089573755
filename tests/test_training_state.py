"""TrainingState (graphgpt/training/interruptions.py): the copy of the parameters and optimizer state taken before
each step restores them exactly, and the check after each step names the first tensor holding NaN or infinity,
whichever chunk it falls in, and after a tensor's array was replaced."""

import numpy as np
import pytest

import graphgpt
from graphgpt.training import interruptions
from graphgpt.training.interruptions import TrainingState

from conftest import make_gpt


def gpt_and_adam(dtype="float32"):
    model = make_gpt().to(dtype)
    optimizer = graphgpt.optim.Adam(model.parameters(), lr=1e-2)
    return model, optimizer


def filled(state, seed):
    rng = np.random.default_rng(seed)
    for tensor in state.tensors.values():
        tensor.data[...] = rng.standard_normal(tensor.data.shape)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_restore_gives_back_exactly_what_take_copied(dtype):
    model, optimizer = gpt_and_adam(dtype)
    state = TrainingState(model, optimizer)
    filled(state, 1)
    before = {name: tensor.data.copy() for name, tensor in state.tensors.items()}
    state.take()
    filled(state, 2)
    state.restore()
    for name, tensor in state.tensors.items():
        np.testing.assert_array_equal(tensor.data, before[name], err_msg=name)
        assert tensor.data.dtype == before[name].dtype


@pytest.mark.parametrize("chunk", [1 << 20, 100, 1])  # all in one chunk, several, each tensor alone
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_first_nonfinite_tensor_is_named_in_any_chunk(monkeypatch, chunk, bad):
    monkeypatch.setattr(interruptions, "CHECK_CHUNK_ELEMENTS", chunk)
    model, optimizer = gpt_and_adam()
    state = TrainingState(model, optimizer)
    assert state.first_nonfinite() is None
    names = list(state.tensors)
    for name in (names[0], names[len(names) // 2], names[-1]):
        data = state.tensors[name].data
        kept = data.copy()
        data.reshape(-1)[-1] = bad
        assert state.first_nonfinite() == name
        data[...] = kept
    assert state.first_nonfinite() is None


def test_a_replaced_array_is_checked_and_taken():
    model, optimizer = gpt_and_adam()
    state = TrainingState(model, optimizer)
    state.first_nonfinite()
    weight = model.lm_head.weight
    weight.data = np.full(weight.data.shape, np.nan, weight.data.dtype)  # a new array, not written into
    assert state.first_nonfinite() == "lm_head.weight"
    weight.data = np.full(weight.data.shape, 3.0, weight.data.dtype)
    assert state.first_nonfinite() is None
    state.take()
    np.testing.assert_array_equal(state.saved["lm_head.weight"], 3.0)


def test_an_array_not_in_c_order_is_read_afresh_at_every_call():
    model, optimizer = gpt_and_adam()
    state = TrainingState(model, optimizer)
    weight = model.lm_head.weight
    weight.data = np.ascontiguousarray(weight.data.T).T  # the same values, stored column by column
    assert state.first_nonfinite() is None
    weight.data[0, -1] = np.inf  # written into that same array
    assert state.first_nonfinite() == "lm_head.weight"
    weight.data[0, -1] = 2.0
    state.take()
    assert state.saved["lm_head.weight"][0, -1] == 2.0
