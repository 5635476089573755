"""The GPT of graphgpt.nn: exact parameter names and layouts, eager results against an independent NumPy
reference, and compiled results against eager on several configurations (odd head counts and lengths too)."""

import math

import numpy as np
import pytest

import graphgpt
from conftest import make_gpt, make_tokens


def expected_parameter_names(num_layers):
    names = ["token_embedding.weight", "position_embedding.weight"]
    for i in range(num_layers):
        block = f"blocks.{i}"
        names += [f"{block}.attention.{proj}.{kind}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
                  for kind in ("weight", "bias")]
        names += [f"{block}.ln1.gamma", f"{block}.ln1.beta", f"{block}.ln2.gamma", f"{block}.ln2.beta",
                  f"{block}.mlp.linear1.weight", f"{block}.mlp.linear1.bias",
                  f"{block}.mlp.linear2.weight", f"{block}.mlp.linear2.bias"]
    return names + ["ln_f.gamma", "ln_f.beta", "lm_head.weight"]


def test_parameter_names_shapes_and_dtypes():
    model = make_gpt(vocab=11, embed=8, layers=3, heads=2, max_seq_len=10)
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(expected_parameter_names(3))
    assert params["token_embedding.weight"].shape == (11, 8)
    assert params["position_embedding.weight"].shape == (10, 8)
    assert params["blocks.2.attention.q_proj.weight"].shape == (8, 8)  # (in_features, out_features)
    assert params["blocks.0.mlp.linear1.weight"].shape == (8, 32)
    assert params["blocks.0.mlp.linear2.weight"].shape == (32, 8)
    assert params["lm_head.weight"].shape == (8, 11)
    assert all(p.dtype == "float32" for p in params.values())
    assert np.all(params["blocks.1.ln2.gamma"].data == 1) and np.all(params["blocks.1.ln2.beta"].data == 0)


def reference_gpt(params, tokens, num_heads):
    """The seed's GPT forward written directly in float64 NumPy, independent of graphgpt's ops."""
    p = {name: value.astype(np.float64) for name, value in params.items()}

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * p[f"{prefix}.gamma"] + p[f"{prefix}.beta"]

    def linear(x, prefix, bias=True):
        y = x @ p[f"{prefix}.weight"]
        return y + p[f"{prefix}.bias"] if bias else y

    batch, seq_len = tokens.shape
    x = p["token_embedding.weight"][tokens] + p["position_embedding.weight"][np.arange(seq_len)][None]
    embed = x.shape[-1]
    head_dim = embed // num_heads
    mask = np.triu(np.ones((seq_len, seq_len)) * -np.inf, k=1)
    block = 0
    while f"blocks.{block}.ln1.gamma" in p:
        prefix = f"blocks.{block}"
        h = layer_norm(x, f"{prefix}.ln1")
        heads = []
        for head in range(num_heads):
            cols = slice(head * head_dim, (head + 1) * head_dim)
            q = linear(h, f"{prefix}.attention.q_proj")[..., cols]
            k = linear(h, f"{prefix}.attention.k_proj")[..., cols]
            v = linear(h, f"{prefix}.attention.v_proj")[..., cols]
            scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(head_dim) + mask
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            heads.append(weights @ v)
        x = x + linear(np.concatenate(heads, axis=-1), f"{prefix}.attention.out_proj")
        h = linear(layer_norm(x, f"{prefix}.ln2"), f"{prefix}.mlp.linear1")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        x = x + linear(h, f"{prefix}.mlp.linear2")
        block += 1
    return linear(layer_norm(x, "ln_f"), "lm_head", bias=False)


CONFIGS = [  # (vocab, embed, layers, heads, batch, seq_len)
    (17, 12, 2, 3, 2, 7),
    (65, 32, 2, 4, 3, 16),
    (9, 10, 1, 5, 1, 1),
    (30, 18, 3, 1, 2, 13),
    (50, 24, 2, 6, 4, 11),
]


@pytest.mark.parametrize("vocab,embed,layers,heads,batch,seq_len", CONFIGS)
def test_eager_matches_numpy_reference_and_compiled_matches_eager(vocab, embed, layers, heads, batch, seq_len):
    model = make_gpt(vocab, embed, layers, heads, max_seq_len=16)
    tokens = make_tokens(vocab, batch, seq_len)
    eager = model(graphgpt.Tensor(tokens))
    assert isinstance(eager, graphgpt.Tensor) and eager.shape == (batch, seq_len, vocab)
    assert eager.dtype == "float32"
    reference = reference_gpt(model.state_dict(), tokens, heads)
    np.testing.assert_allclose(eager.data, reference, rtol=1e-4, atol=1e-5)

    fwd = graphgpt.compile(model, tokens)
    compiled = fwd.run(tokens)
    assert compiled.shape == (batch, seq_len, vocab) and compiled.dtype == np.float32
    np.testing.assert_allclose(compiled, eager.data, rtol=1e-6, atol=1e-6)


def test_float64_model_runs_in_float64():
    model = make_gpt().to("float64")
    tokens = make_tokens(17, 2, 5)
    fwd = graphgpt.compile(model, tokens)
    out = fwd.run(tokens)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, reference_gpt(model.state_dict(), tokens, 3), rtol=1e-10, atol=1e-12)


def test_causal_mask_hides_the_future():
    model = make_gpt()
    tokens = make_tokens(17, 1, 8)
    changed = tokens.copy()
    changed[0, 5:] = (changed[0, 5:] + 1) % 17
    fwd = graphgpt.compile(model, tokens)
    before, after = fwd.run(tokens), fwd.run(changed)
    np.testing.assert_array_equal(before[:, :5], after[:, :5])
    assert not np.allclose(before[:, 5:], after[:, 5:])


def test_sequence_longer_than_max_seq_len_is_refused():
    model = make_gpt(max_seq_len=8)
    with pytest.raises(ValueError, match="longer than max_seq_len 8"):
        model(graphgpt.Tensor(make_tokens(17, 1, 9)))


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        graphgpt.nn.GPT(10, 10, 1, 3, 8)


def test_same_seed_same_model():
    a, b = make_gpt(seed=3), make_gpt(seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(x, y, err_msg=name)
