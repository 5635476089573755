"""graphgpt.nn Module machinery and layers: naming, parameters(), state_dict / load_state_dict refusals, and the
layers' semantics (Linear layout, LayerNorm biased variance, Embedding)."""

import numpy as np
import pytest

import graphgpt
from graphgpt import nn
from conftest import make_gpt


def test_state_dict_round_trip_and_copy_semantics(small_gpt):
    state = small_gpt.state_dict()
    assert list(state) == [name for name, _ in small_gpt.named_parameters()]
    state["ln_f.gamma"][...] = 7  # a copy: the model is untouched
    assert np.all(small_gpt.ln_f.gamma.data == 1)
    other = make_gpt(seed=9)
    other.load_state_dict(small_gpt.state_dict())
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(value, small_gpt.state_dict()[name])


def test_load_state_dict_refuses_and_names_every_problem(small_gpt):
    state = small_gpt.state_dict()
    original = small_gpt.state_dict()
    del state["ln_f.beta"]
    state["extra.weight"] = np.zeros(3)
    state["lm_head.weight"] = np.zeros((3, 3), np.float32)
    state["ln_f.gamma"] = np.full(12, 5.0, np.float32)  # valid entry: must not be applied when others are bad
    with pytest.raises(ValueError) as caught:
        small_gpt.load_state_dict(state)
    message = str(caught.value)
    assert "missing ['ln_f.beta']" in message and "unexpected ['extra.weight']" in message
    assert "lm_head.weight: expected shape [12, 17], got [3, 3]" in message
    for name, value in small_gpt.state_dict().items():
        np.testing.assert_array_equal(value, original[name], err_msg=f"{name} changed by a refused load")


def test_linear_is_x_at_w_plus_b():
    graphgpt.manual_seed(1)
    layer = nn.Linear(3, 2)
    layer.bias.data[...] = [0.5, -1.0]
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(layer(graphgpt.Tensor(x)).data, x @ layer.weight.data + layer.bias.data, rtol=1e-6)
    assert nn.Linear(3, 2, bias=False).bias is None


def test_layer_norm_uses_biased_variance_and_eps():
    ln = nn.LayerNorm(4)
    x = np.array([[1.0, 2.0, 3.0, 6.0]], np.float64)
    ln.to("float64")
    expected = (x - 3.0) / np.sqrt(np.var(x, ddof=0) + 1e-5)
    np.testing.assert_allclose(ln(graphgpt.Tensor(x, dtype="float64")).data, expected, rtol=1e-12)


def test_embedding_gathers_rows():
    graphgpt.manual_seed(0)
    emb = nn.Embedding(5, 3)
    indices = np.array([[4, 0], [2, 2]])
    np.testing.assert_array_equal(emb(graphgpt.Tensor(indices)).data, emb.weight.data[indices])


def test_named_modules_and_shared_parameters():
    class Tied(nn.Module):
        def __init__(self):
            self.first = nn.Linear(2, 2)
            self.layers = [nn.Linear(2, 2), nn.Linear(2, 2)]
            self.layers[1].weight = self.first.weight  # tied: listed once

        def forward(self, x):
            return x

    model = Tied()
    assert [name for name, _ in model.named_modules()] == ["", "first", "layers.0", "layers.1"]
    names = [name for name, _ in model.named_parameters()]
    assert names == ["first.weight", "first.bias", "layers.0.weight", "layers.0.bias", "layers.1.bias"]


def test_to_float64_converts_parameters(small_gpt):
    small_gpt.to("float64")
    assert all(p.dtype == "float64" for p in small_gpt.parameters())


@pytest.mark.parametrize("arguments, says", [
    ((65, 64, 2, 0), "num_heads must be a whole number of at least 1, got 0"),
    ((0, 64, 2, 4), "vocab_size must be a whole number of at least 1, got 0"),
    ((65, 64, -1, 4), "num_layers must be a whole number of at least 0, got -1"),
    ((65, 64, 2, 4.0), "num_heads must be a whole number of at least 1, got 4.0"),
    ((65, 64, 2, 3), "embed_dim \\(64\\) must be divisible by num_heads \\(3\\)"),
])
def test_gpt_sizes_are_checked_with_a_clear_message(arguments, says):
    with pytest.raises(ValueError, match=says):
        nn.GPT(*arguments, max_seq_len=8)
