"""Numerical faults: check_numerics names the first node (module path, source line) that makes NaN or infinity,
and the GPT stays finite where the math allows: extreme logits, fully masked attention rows, long sequences."""

import numpy as np
import pytest

import graphgpt
from graphgpt import nn
from graphgpt.nn import functional as F
from conftest import make_gpt, make_tokens


class LogOfShifted(nn.Module):
    def forward(self, x):
        shifted = x - 1.0
        return (shifted.log() * 2.0).sum()  # log of a negative number: the first NaN is made here


@pytest.mark.filterwarnings("ignore:invalid value encountered in log:RuntimeWarning")  # the NaN is the point
def test_check_numerics_names_the_first_bad_node_and_line():
    x = np.array([0.5, 2.0, 3.0], np.float32)
    compiled = graphgpt.compile(LogOfShifted(), x, check_numerics=True, passes=[])
    with pytest.raises(graphgpt.NumericalError) as caught:
        compiled.run(x)
    message = str(caught.value)
    assert "(log)" in message and "test_numerics.py:" in message and "1 NaN" in message
    line = int(message.split("test_numerics.py:")[1].split(")")[0])
    assert "shifted.log()" in open(__file__).read().splitlines()[line - 1]
    np.testing.assert_array_equal(graphgpt.compile(LogOfShifted(), x).run(x), np.float32(np.nan))  # off by default


def test_check_numerics_blames_inputs_that_arrive_broken():
    x = np.array([np.inf, 2.0], np.float32)
    compiled = graphgpt.compile(lambda v: (v * 2).sum(), x, check_numerics="nonfinite")
    with pytest.raises(graphgpt.NumericalError, match="%v \\(input\\) holds NaN or infinity before the run"):
        compiled.run(x)


def test_extreme_logits_keep_loss_and_gradients_finite():
    model = make_gpt()
    model.lm_head.weight.data *= 1e4  # logits in the thousands: exp would overflow without the stable forms
    tokens, targets = make_tokens(17, 2, 8), make_tokens(17, 2, 8, seed=1)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, check_numerics=True)
    loss = step.run(tokens, targets)
    assert np.isfinite(loss) and loss > 100
    assert all(np.all(np.isfinite(g)) for g in step.grads.values())


class MaskedAttentionEnergy(nn.Module):
    """sum(attention(x)^2) under a causal mask whose row 2 is fully masked: position 2 may attend to nothing."""

    def __init__(self):
        graphgpt.manual_seed(0)
        self.attention = nn.MultiHeadAttention(8, 2)
        self.mask = np.where(np.triu(np.ones((4, 4), bool), k=1), -np.inf, 0.0)
        self.mask[2, :] = -np.inf

    def forward(self, x):
        return (self.attention(x, graphgpt.Tensor(self.mask.astype(x.dtype))) ** 2).sum()


def test_fully_masked_attention_rows_stay_finite():
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    model = MaskedAttentionEnergy()
    assert np.isfinite(graphgpt.compile(model, x, check_numerics=True).run(x))
    weights = F.softmax(graphgpt.Tensor(np.array([[-np.inf, -np.inf], [0.0, -np.inf]], np.float32))).data
    np.testing.assert_array_equal(weights, [[0, 0], [1, 0]])  # no distribution: zeros, not NaN
    logs = F.log_softmax(graphgpt.Tensor(np.array([[-np.inf, -np.inf], [0.0, -np.inf]], np.float32))).data
    np.testing.assert_array_equal(logs, [[-np.inf, -np.inf], [0, -np.inf]])  # their logs: -inf, not NaN
    report = graphgpt.check_gradients(model, x)
    assert report.passed, str(report)


def test_nonfinite_mode_shows_the_causal_masks_intended_infinities():
    model = make_gpt()
    tokens = make_tokens(17, 1, 5)
    graphgpt.compile(model, tokens, check_numerics=True).run(tokens)  # NaN mode: clean
    # The GPT's mask is a buffer (a graph parameter), so the mode names it before the run starts.
    with pytest.raises(graphgpt.NumericalError, match=r"%causal_mask \(param\) holds NaN or infinity"):
        graphgpt.compile(model, tokens, check_numerics="nonfinite").run(tokens)
    with pytest.raises(ValueError, match="check_numerics must be"):
        graphgpt.compile(model, tokens, check_numerics="loud")


def test_long_sequences_stay_finite():
    model = make_gpt(vocab=11, embed=8, layers=2, heads=2, max_seq_len=512)
    tokens = make_tokens(11, 1, 512)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, check_numerics=True)
    assert np.isfinite(step.run(tokens, tokens))
