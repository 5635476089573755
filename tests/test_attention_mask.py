"""Attention masks: a bool mask (True = may attend) and an additive float mask (0 / -inf) each give the causal
result, eager and compiled; a float mask of 0s and 1s (the course's convention, which adding would silently ignore)
is refused with a message giving both conventions, eagerly and while tracing (constants and buffers alike)."""

import math

import numpy as np
import pytest

import graphgpt
from graphgpt import nn
from graphgpt.nn import functional as F

T = 5
RNG = np.random.default_rng(0)
Q, K, V = (RNG.normal(size=(2, 3, T, 4)).astype(np.float32) for _ in range(3))
COURSE_MASK = np.tril(np.ones((T, T)))  # the course's create_causal_mask: float64, 1 = may attend
REFUSED = r"only 0s and 1s.*bool mask \(True = may attend.*additive one \(0 / -inf"


def causal_reference(q, k, v):
    """Causal attention written out row by row in float64: query i sees keys 0..i only."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    out = np.zeros(q.shape[:-1] + v.shape[-1:])
    for i in range(q.shape[-2]):
        scores = q[..., i:i + 1, :] @ np.swapaxes(k[..., :i + 1, :], -1, -2) / math.sqrt(q.shape[-1])
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[..., i:i + 1, :] = (weights / weights.sum(-1, keepdims=True)) @ v[..., :i + 1, :]
    return out


MASKS = {"bool": F.create_causal_mask(T), "additive": F.causal_mask(T),
         "additive float64": F.causal_mask(T, dtype="float64")}


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_bool_and_additive_masks_give_the_causal_result(kind):
    out = F.scaled_dot_product_attention(Q, K, V, MASKS[kind])[0].data
    np.testing.assert_allclose(out, causal_reference(Q, K, V), rtol=1e-5, atol=1e-6)


def test_masks_match_torch_is_causal():
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (Q, K, V)), is_causal=True).numpy()
    for kind, mask in MASKS.items():
        np.testing.assert_allclose(F.scaled_dot_product_attention(Q, K, V, mask)[0].data, expected, rtol=1e-5,
                                   atol=1e-6, err_msg=kind)


@pytest.mark.parametrize("mask", [COURSE_MASK, COURSE_MASK.astype(np.float32), np.ones((T, T), np.float32)],
                         ids=["course float64", "float32", "all ones"])
def test_a_float_mask_of_zeros_and_ones_is_refused(mask):
    with pytest.raises(ValueError, match=REFUSED):
        F.scaled_dot_product_attention(Q, K, V, mask)


def test_an_integer_mask_is_refused_naming_both_conventions():
    with pytest.raises(ValueError, match=r"expected a bool mask \(True = may attend\) or a float mask.*got i64"):
        F.scaled_dot_product_attention(Q, K, V, COURSE_MASK.astype(np.int64))


def test_an_all_zero_float_mask_is_additive_and_masks_nothing():
    unmasked = F.scaled_dot_product_attention(Q, K, V)[0].data
    np.testing.assert_array_equal(F.scaled_dot_product_attention(Q, K, V, np.zeros((T, T), np.float32))[0].data,
                                  unmasked)


def test_it_returns_the_course_pair_of_output_and_weights():
    out, weights = F.scaled_dot_product_attention(Q, K, V, MASKS["bool"])
    np.testing.assert_allclose(weights.data.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights.data[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    np.testing.assert_array_equal(out.data, (weights @ V).data)


def gpt_attention_and_input():
    graphgpt.manual_seed(3)
    model = nn.GPT(vocab_size=11, embed_dim=8, num_layers=1, num_heads=2, max_seq_len=8)
    x = graphgpt.Tensor(RNG.normal(size=(2, T, 8)).astype(np.float32))
    return model, model.blocks[0].attention, x


@pytest.mark.parametrize("shape", ["(T, T)", "(B, T, T)"])
def test_multi_head_attention_takes_a_bool_mask_as_the_gpt_takes_its_own(shape):
    model, attention, x = gpt_attention_and_input()
    gpt_way = attention(x, model.causal_mask[:T, :T]).data
    mask = np.tril(np.ones((T, T), bool))
    mask = mask if shape == "(T, T)" else np.broadcast_to(mask, (2, T, T))
    np.testing.assert_array_equal(attention(x, mask).data, gpt_way)
    with pytest.raises(ValueError, match=REFUSED):
        attention(x, mask.astype(np.float32))


class MaskedAttention(nn.Module):
    """Attention with its mask held as a buffer (as the GPT holds its causal_mask)."""

    def __init__(self, attention, mask):
        self.attention = attention
        self.mask = graphgpt.Tensor(mask)

    def forward(self, x):
        return self.attention(x, self.mask[:x.shape[1], :x.shape[1]])


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_compiled_masks_give_what_eager_gives(kind):
    model, attention, x = gpt_attention_and_input()
    module = MaskedAttention(attention, MASKS[kind].data)
    expected = attention(x, model.causal_mask[:T, :T]).data
    np.testing.assert_array_equal(module(x).data, expected)
    np.testing.assert_allclose(graphgpt.compile(module, x.data)(x.data), expected, rtol=1e-6, atol=1e-7)
    closure_mask = MASKS[kind]  # a constant of the traced graph
    compiled = graphgpt.compile(lambda x: attention(x, closure_mask), x.data)
    np.testing.assert_allclose(compiled(x.data), expected, rtol=1e-6, atol=1e-7)


def test_compiling_with_a_zero_one_float_mask_is_refused_for_a_buffer_and_a_constant():
    _, attention, x = gpt_attention_and_input()
    with pytest.raises(ValueError, match=REFUSED):
        graphgpt.compile(MaskedAttention(attention, COURSE_MASK.astype(np.float32)), x.data)
    constant = graphgpt.Tensor(COURSE_MASK.astype(np.float32))
    with pytest.raises(ValueError, match=REFUSED):
        graphgpt.compile(lambda x: attention(x, constant), x.data)
    with pytest.raises(ValueError, match=REFUSED):  # a bool mask made float inside the traced code
        graphgpt.compile(lambda x: attention(x, F.create_causal_mask(T).astype("float32")), x.data)


def test_a_mask_given_as_a_graph_input_is_taken_by_dtype():
    _, attention, x = gpt_attention_and_input()
    compiled = graphgpt.compile(lambda x, mask: attention(x, mask), x.data, MASKS["bool"].data)
    np.testing.assert_allclose(compiled(x.data, MASKS["bool"].data), attention(x, MASKS["bool"]).data,
                               rtol=1e-6, atol=1e-7)
