"""Fused attention (ir/ops/attention.py, passes/attention_fusion.py): the kernels in blocks against float64
references, the pass finding attention as graphgpt.nn and as a user writes it, refusing what it must not fuse,
and compiled steps with it agreeing with the exact default.

The bound: fused and composite agree within float32 rounding of a reordered sum. Each gradient sums its terms
block by block rather than in one GEMM, so the two differ by a few units in the last place of the largest term:
we allow 64 float32 epsilons of each tensor's largest magnitude (measured: at most 2.7 in these tests)."""

import math

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import get_op
from graphgpt.ir.ops import blockwise
from graphgpt.nn import Linear, Module, functional as F
from graphgpt.tensor import Parameter
from graphgpt.passes.attention_fusion import fuse_attention
from conftest import make_gpt, make_tokens

EPS32 = np.finfo(np.float32).eps
REASSOCIATE = {"reassociate"}


def assert_within_reordering(actual, expected, what=""):
    scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
    difference = float(np.abs(np.asarray(actual, np.float64) - expected).max())
    assert difference <= 64 * EPS32 * scale, \
        f"{what}: differs by {difference:.3g}, {difference / scale / EPS32:.1f} eps"


def assert_gradients_within_reordering(actual: dict, expected: dict):
    """Every gradient within the bound, of the largest magnitude among its module's gradients: a gradient that is
    zero in exact arithmetic (the key projection's bias: softmax ignores a constant per row) is rounding only."""
    assert actual.keys() == expected.keys()
    for name, grad in actual.items():
        module = name.rsplit(".", 1)[0]
        scale = max(np.abs(g).max() for n, g in expected.items() if n.rsplit(".", 1)[0] == module)
        assert np.abs(grad - expected[name]).max() <= 64 * EPS32 * scale, name


def reference(q, k, v, mask, scale):
    """float64 attention and the three gradients of sum(attention * dout), written out."""
    scores = q @ np.swapaxes(k, -1, -2) * scale + mask
    peak = scores.max(-1, keepdims=True)
    peak[np.isneginf(peak)] = 0
    weights = np.exp(scores - peak)
    total = weights.sum(-1, keepdims=True)
    weights = weights / np.where(total == 0, 1, total)
    return weights


def test_the_kernels_in_blocks_match_float64(monkeypatch):
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((2, 3, 9, 4)) for _ in range(4))
    mask = np.triu(np.full((9, 9), -np.inf), 1)
    mask[4] = -np.inf  # a query that may see nothing: zeros, as the composite's softmax gives
    weights = reference(q, k, v, mask, 0.5)
    out64 = weights @ v
    d_scores = weights * (dout @ np.swapaxes(v, -1, -2) - (dout * out64).sum(-1, keepdims=True)) * 0.5
    grads64 = [d_scores @ k, np.swapaxes(d_scores, -1, -2) @ q, np.swapaxes(weights, -1, -2) @ dout]
    arrays = [x.astype(np.float32) for x in (q, k, v, mask)]
    for block_elements in (blockwise.BLOCK_ELEMENTS, 2 * 3 * 9 * 2):  # one block; blocks of two query rows
        monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block_elements)
        out = get_op("attention").evaluate(arrays, {"scale": 0.5})
        assert_within_reordering(out, out64, "attention")
        assert not out[:, :, 4].any()
        grads = get_op("attention_grad").evaluate(
            arrays + [out64.astype(np.float32), dout.astype(np.float32)], {"scale": 0.5})
        for name, grad, grad64 in zip("qkv", grads, grads64):
            assert_within_reordering(grad, grad64, f"d{name} in blocks of {block_elements}")


def test_the_pass_fuses_the_gpts_attention_and_agrees():
    model = make_gpt(vocab=19, embed=24, layers=2, heads=3)
    tokens, targets = make_tokens(19, 4, 12), make_tokens(19, 4, 12, seed=1)
    forward = graphgpt.compile(model, tokens, fast_math=REASSOCIATE)
    ops = [node.op for node in forward.graph.nodes]
    assert ops.count("attention") == 2 and "softmax" not in ops
    assert_within_reordering(forward.run(tokens), graphgpt.compile(model, tokens).run(tokens), "logits")

    exact = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1)
    fused = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1, fast_math=REASSOCIATE)
    assert [node.op for node in fused.graph.nodes].count("attention_grad") == 2
    assert "attention fused before autodiff 2" in fused.report()
    # Nothing of the (T, T) weights' size is kept or made, but the causal mask itself.
    square = [node for node in fused.graph.nodes if node.output.type.shape[-2:] == (12, 12)
              and node.output.type.rank > 2]
    assert not square, [node.describe() for node in square]
    assert_within_reordering(fused.run(tokens, targets), exact.run(tokens, targets), "loss")
    assert_gradients_within_reordering(fused.grads, {name: grad.copy() for name, grad in exact.grads.items()})


def test_without_the_flag_nothing_is_fused():
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 2, 5)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy)
    assert not {"attention", "attention_grad"} & {node.op for node in step.graph.nodes}
    with pytest.raises(ValueError, match="fuse_attention may change results.*fast_math=\\{'reassociate'\\}"):
        graphgpt.compile(model, tokens, passes=["fuse_attention"])


class HandWrittenAttention(Module):
    """Attention as a user writes it (nanoGPT's way): one qkv projection, a bool causal mask applied with where,
    the scores divided by sqrt(head size)."""

    def __init__(self, embed: int, heads: int, length: int, learned_bias: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = Linear(embed, 3 * embed), Linear(embed, embed)
        self.allowed = graphgpt.Tensor(np.tril(np.ones((length, length), bool)))
        self.bias = Parameter(np.random.default_rng(2).normal(0, 0.1, (length, length)).astype(np.float32)) \
            if learned_bias else None

    def forward(self, x):
        batch, length, embed = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, embed // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(embed // self.heads)
        if self.bias is not None:
            scores = scores + self.bias
        weights = self.allowed.where(scores, -math.inf).softmax(-1)
        return self.proj((weights @ v).permute(0, 2, 1, 3).reshape(batch, length, embed))


@pytest.mark.parametrize("learned_bias", [False, True])
def test_a_users_hand_written_attention_is_recognised(learned_bias):
    graphgpt.manual_seed(3)
    module = HandWrittenAttention(12, 3, 7, learned_bias)
    x, target = np.random.default_rng(1).standard_normal((2, 2, 7, 12)).astype(np.float32)
    loss = lambda out, target: ((out - target) ** 2).mean()  # noqa: E731
    exact = graphgpt.compile(module, x, target, loss=loss, shards=1)
    fused = graphgpt.compile(module, x, target, loss=loss, shards=1, fast_math=REASSOCIATE)
    assert [node.op for node in fused.graph.nodes].count("attention") == 1
    assert_within_reordering(fused.run(x, target), exact.run(x, target), "loss")
    expected = {name: grad.copy() for name, grad in exact.grads.items()}
    if learned_bias:  # the bias gets its gradient (from the composite formula: a mask the loss depends on)
        assert "bias" in fused.grads
    for name, grad in fused.grads.items():
        assert_within_reordering(grad, expected[name], name)


def test_what_must_stay_composite_is_left_alone():
    def returns_weights(q, k, v):
        out, weights = F.scaled_dot_product_attention(q, k, v)
        return out, weights

    def drops_weights_out(q, k, v):
        weights = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        return (weights * 0.9) @ v  # anything between the weights and their product

    def keys_shared_by_the_batch(q, k, v):  # k and v broadcast over q's batch: the fused op wants them equal
        allowed = graphgpt.Tensor(np.tril(np.ones((4, 4), bool)))  # a bool mask: fusing it would make nodes
        return allowed.where(q @ k.transpose(-2, -1) * 0.5, -math.inf).softmax(-1) @ v

    arrays = [np.ones((2, 4, 3), np.float32)] * 3
    shared = [np.ones((2, 4, 3), np.float32), np.ones((1, 4, 3), np.float32), np.ones((1, 4, 3), np.float32)]
    for function, inputs in ((returns_weights, arrays), (drops_weights_out, arrays),
                             (keys_shared_by_the_batch, shared)):
        graph = graphgpt.compile(function, *inputs, passes=[]).graph
        result = fuse_attention(graph)
        assert result.summary == {"attention fused": 0}, function.__name__
        assert [node.op for node in result.graph.nodes] == [node.op for node in graph.nodes]  # nothing left behind
    symbolic = graphgpt.compile(returns_weights, *arrays, dynamic=True, fast_math=REASSOCIATE)
    assert "attention" not in {node.op for node in symbolic.program.graphs[0].graph.nodes}


def test_a_split_step_fuses_each_shard():
    model = make_gpt(vocab=19, embed=24, layers=2, heads=3)
    tokens, targets = make_tokens(19, 4, 12), make_tokens(19, 4, 12, seed=1)
    exact = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1)
    split = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=2, fast_math=REASSOCIATE)
    shard = split.program.graphs[0]
    assert [node.op for node in shard.graph.nodes].count("attention_grad") == 2
    assert "attention fused before autodiff 2" in split.report()
    assert_within_reordering(split.run(tokens, targets), exact.run(tokens, targets), "loss")
    # the shards' fused kernels ran at once, on two threads
    assert_gradients_within_reordering(split.grads, {name: grad.copy() for name, grad in exact.grads.items()})
