"""Optimizer state stored joined: each slot of a run of parameters is one vector (optimizer.joined), the
parameters' own state tensors views of it. Checked: the same bits as state stored apart, eager and compiled, split
and whole; state_dict and load_state_dict by parameter as before; a state tensor replaced or assigned between
steps is read and updated; a second compile keeps the values; a replacement of the wrong shape is refused."""

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from graphgpt.optim import SGD, AdamW
from conftest import make_gpt, make_tokens

RUN = "<token_embedding.weight to lm_head.weight>"


def trained(joined: bool, how: str, steps: int = 3, kind=AdamW, monkeypatch=None):
    """Parameters and optimizer state (by parameter) after `steps` steps of a 2-layer GPT."""
    if not joined:  # the state of each parameter stored apart: the update joins copies of it, as before
        monkeypatch.setattr(graphgpt.optim.Optimizer, "_join_state", lambda self: None)
    model = make_gpt()
    options = dict(lr=0.05, clip_grad_norm=1.0) if kind is AdamW else dict(lr=0.05, momentum=0.9)
    optimizer = kind(**options)
    tokens = make_tokens(17, 4, 8)
    if how == "eager":
        optimizer.bind(model.named_parameters())
        for _ in range(steps):
            loss = F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=optimizer,
                                shards=2 if how == "split" else 1)
        for _ in range(steps):
            step.run(tokens, tokens)
    assert bool(optimizer.joined) == joined
    monkeypatch.undo()
    return ({name: p.data.copy() for name, p in model.named_parameters()}, optimizer.state_dict()["state"],
            optimizer)


@pytest.mark.parametrize("kind", [AdamW, SGD])
@pytest.mark.parametrize("how", ["eager", "compiled", "split"])
def test_joined_state_gives_the_bits_of_state_stored_apart(how, kind, monkeypatch):
    params, state, optimizer = trained(True, how, kind=kind, monkeypatch=monkeypatch)
    params_apart, state_apart, _ = trained(False, how, kind=kind, monkeypatch=monkeypatch)
    assert state.keys() == state_apart.keys() and params.keys() == params_apart.keys()
    for name in params:
        np.testing.assert_array_equal(params[name], params_apart[name], err_msg=name)
    for name in state:
        np.testing.assert_array_equal(state[name], state_apart[name], err_msg=name)
    for slot in optimizer.slots:  # each parameter's state is its piece of the run's vector
        vector = optimizer.joined[f"{slot}.{RUN}"].data
        pieces = [optimizer.state[f"{slot}.{name}"].data for name in params]
        assert all(np.shares_memory(piece, vector) for piece in pieces)
        np.testing.assert_array_equal(np.concatenate([piece.reshape(-1) for piece in pieces]), vector)


def stepped_once(optimizer):
    """A 2-layer GPT, its tokens, and its compiled step with `optimizer`, run once."""
    model, tokens = make_gpt(), make_tokens(17, 2, 8)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=optimizer, shards=1)
    step.run(tokens, tokens)
    return model, tokens, step


@pytest.mark.parametrize("replace", ["tensor", "data"])
def test_a_state_tensor_replaced_between_compiled_steps_is_read_and_updated(replace):
    optimizer = SGD(lr=0.1, momentum=0.5)
    model, tokens, step = stepped_once(optimizer)
    name = "momentum_buffer.lm_head.weight"
    new = np.full(optimizer.state[name].shape, 3.0, np.float32)
    if replace == "tensor":
        optimizer.state[name] = graphgpt.Tensor(new.copy())
    else:
        optimizer.state[name].data = new.copy()
    before = model.lm_head.weight.data.copy()
    step.run(tokens, tokens)
    gradient = step.grads["lm_head.weight"]
    buffer = optimizer.state[name].data
    np.testing.assert_allclose(buffer, 0.5 * new + gradient, rtol=1e-6)  # the replacement, read and updated
    np.testing.assert_allclose(before - model.lm_head.weight.data, 0.1 * buffer, rtol=1e-5, atol=1e-7)
    assert np.shares_memory(buffer, optimizer.joined[f"momentum_buffer.{RUN}"].data)


def test_a_state_tensor_replaced_by_one_of_another_shape_or_dtype_is_refused_in_one_line():
    optimizer = AdamW(lr=0.1)
    model, tokens, step = stepped_once(optimizer)
    optimizer.state["exp_avg.lm_head.weight"] = graphgpt.Tensor(np.zeros((3, 3), np.float32))
    with pytest.raises(graphgpt.ModelChangedError, match=r"optimizer state 'exp_avg.lm_head.weight' must stay a "
                                                         r"tensor of shape \[12, 17\] of float32 \(its "
                                                         r"parameter's\), got shape \[3, 3\] of float32$"):
        step.run(tokens, tokens)
    optimizer.state["exp_avg.lm_head.weight"] = graphgpt.Tensor(np.zeros((12, 17)), dtype="float64")
    with pytest.raises(graphgpt.ModelChangedError, match=r"got shape \[12, 17\] of float64$"):
        step.run(tokens, tokens)
    F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens)).backward()
    with pytest.raises(ValueError, match="must stay a tensor of shape"):
        optimizer.step()


def test_compiling_over_a_state_tensor_of_another_dtype_is_refused():
    model, tokens = make_gpt(), make_tokens(17, 2, 8)
    optimizer = AdamW(model.named_parameters(), lr=0.1)
    optimizer.state["exp_avg_sq.ln_f.gamma"] = graphgpt.Tensor(np.zeros(12), dtype="float64")
    with pytest.raises(ValueError, match=r"optimizer state 'exp_avg_sq.ln_f.gamma' must stay a tensor of shape \[12\] "
                                         r"of float32 \(its parameter's\), got shape \[12\] of float64$"):
        graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=optimizer)


def test_state_loaded_and_compiled_again_keeps_its_values():
    """load_state_dict writes into the views (so into the vectors); a second compile binds the same vectors."""
    optimizer = AdamW(lr=0.1)
    model, tokens, step = stepped_once(optimizer)
    saved = optimizer.state_dict()
    assert f"exp_avg.{RUN}" not in saved["state"] and "exp_avg.lm_head.weight" in saved["state"]
    vectors = dict(optimizer.joined)
    again = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=optimizer)
    assert all(optimizer.joined[key] is vector for key, vector in vectors.items())
    optimizer.load_state_dict({**saved, "state": {key: value * 2 for key, value in saved["state"].items()}})
    np.testing.assert_array_equal(optimizer.joined[f"exp_avg.{RUN}"].data,
                                  np.concatenate([2 * saved["state"][f"exp_avg.{name}"].reshape(-1)
                                                  for name, _ in model.named_parameters()]))
    again.run(tokens, tokens)
    step.run(tokens, tokens)  # both steps read the one state
    assert optimizer.state["step"].data == 2 * saved["state"]["step"] + 2
