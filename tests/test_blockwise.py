"""The blocked kernels (ir/ops/blockwise.py) give the same results whatever the block size: one block, many, an
uneven last block, blocks of single rows. Their scratch (ir/scratch.py) is tested in test_scratch.py."""

from __future__ import annotations

import numpy as np
import pytest

from graphgpt.ir import get_op
from graphgpt.ir.ops import blockwise

rng = np.random.default_rng(0)
X = rng.standard_normal((5, 7, 12)).astype(np.float32)
G = rng.standard_normal((5, 7, 12)).astype(np.float32)
GAMMA = rng.standard_normal(12).astype(np.float32)
BETA = rng.standard_normal(12).astype(np.float32)
KERNELS = {
    "gelu_grad": ([G, X], {}),
    "layer_norm": ([X, GAMMA, BETA], {"eps": 1e-5}),
    "layer_norm_grad": ([G, X, GAMMA], {"eps": 1e-5}),
    "layer_norm_gamma_grad": ([G, X], {"eps": 1e-5}),
}


@pytest.mark.parametrize("op", sorted(KERNELS))
@pytest.mark.parametrize("block", [1, 12, 50, 13 * 12, 1 << 18])  # rows of one element up to one block
def test_block_size_does_not_change_results(op, block, monkeypatch):
    arrays, attrs = KERNELS[op]
    whole = get_op(op).evaluate(arrays, attrs)
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", block)
    blocked = get_op(op).evaluate(arrays, attrs)
    np.testing.assert_allclose(blocked, whole, rtol=2e-6, atol=2e-6)


def test_out_must_be_contiguous():
    out = np.empty((12, 5, 7), np.float32).transpose(1, 2, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        get_op("gelu_grad").evaluate_into(out, [G, X], {})
