"""The generated cross-entropy kernels (the loss and its gradient) against their ops' NumPy kernels: reordered row
sums, exp and log within the library gap (tests/test_numba_kernels.py states the bounds they are built from), the
loss's mean summed in float64 as NumPy's is; special rows (infinities, NaN, no positions) and targets out of range
as NumPy gives them."""

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install numba")

from graphgpt.ir import get_op  # noqa: E402
from graphgpt.passes.numba_backend.backend import SOURCES  # noqa: E402
from graphgpt.passes.numba_backend.engine import load_kernel  # noqa: E402

from test_numba_kernels import (DTYPES, LIBRARY_ULP_GAP, assert_same_bits, assert_within, both,  # noqa: E402
                                make_node, random, spacing, unit_roundoff)


def cross_entropy_node(shapes, dtype):
    return make_node("cross_entropy", shapes, dtype, input_dtypes=[dtype, "int64"])


def cross_entropy_case(shape, dtype, seed):
    logits = random(shape, dtype, seed, scale=3.0)
    targets = np.random.default_rng(seed + 1).integers(0, shape[-1], shape[:-1])
    return logits, targets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 17), (4, 64, 99), (9,), (3, 37, 11)])
def test_cross_entropy(shape, dtype):
    logits, targets = cross_entropy_case(shape, dtype, 21)
    if logits.ndim > 1:
        logits[..., 0, 1:] = -np.inf  # masked classes, the target's own aside
        logits[..., 0, 0] = 0.5
        targets[..., 0] = 0
    node = cross_entropy_node([shape, shape[:-1]], dtype)
    generated, reference = both(node, [logits, targets])
    u, n = unit_roundoff(dtype), shape[-1]
    rows = logits.reshape(-1, n).astype(np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    total = np.exp(shifted).sum(axis=1)
    picked = np.take_along_axis(shifted, targets.reshape(-1, 1), axis=1)[:, 0] - np.log(total)
    # Each row's log-probability: the sum of exps within the library gap of each term and two reordered sums
    # (relative, so in log absolute), log's own library gap, and the subtraction's rounding on each side. The mean:
    # NumPy sums pairwise in the dtype (within (r + 1) u sum|p| of the exact sum), the kernel in float64, and each
    # side divides and rounds once.
    row_gap = (2 * LIBRARY_ULP_GAP * u + 2 * (n + 1) * u + LIBRARY_ULP_GAP * spacing(np.log(total), dtype)
               + 2 * spacing(picked, dtype))
    r = picked.size
    bound = (row_gap.sum() + (r + 1) * u * np.abs(picked).sum()) / r + 2 * spacing(reference, dtype)
    assert_within(generated, reference, np.asarray(bound))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_special_rows_as_numpy(dtype):
    """A fully masked row gives an infinite loss, a row holding NaN a NaN one, no positions NaN, as NumPy's."""
    for row_value, expected in ((-np.inf, np.inf), (np.nan, np.nan)):
        logits, targets = cross_entropy_case((3, 7), dtype, 5)
        logits[1] = row_value
        node = cross_entropy_node([(3, 7), (3,)], dtype)
        generated, reference = both(node, [logits, targets])
        assert_same_bits(generated, reference)
        assert_same_bits(generated, np.asarray(expected, dtype))
    node = cross_entropy_node([(0, 7), (0,)], dtype)
    generated, reference = both(node, [np.zeros((0, 7), dtype), np.zeros((0,), np.int64)])
    assert np.isnan(generated) and np.isnan(reference)


@pytest.mark.parametrize("bad", [-1, 7])
def test_cross_entropy_target_out_of_range_raises_numpys_error(bad):
    logits, targets = cross_entropy_case((3, 7), "float32", 5)
    targets[2] = bad
    node = cross_entropy_node([(3, 7), (3,)], "float32")
    source = SOURCES["cross_entropy"](node, False)
    out = np.zeros((), np.float32)
    with pytest.raises(IndexError) as generated:
        load_kernel(source.text, source.entry)(out, logits, targets)
    with pytest.raises(IndexError) as reference:
        get_op("cross_entropy").compute_into(out, logits, targets)
    assert str(generated.value) == str(reference.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 17), (4, 64, 99), (9,), (3, 37, 11)])
def test_cross_entropy_grad(shape, dtype):
    logits, targets = cross_entropy_case(shape, dtype, 31)
    if logits.ndim > 1:
        logits.reshape(-1, shape[-1])[-1] = -np.inf  # a fully masked row: zeros, less 1 at the target
    g = np.asarray(1.7, dtype)
    node = make_node("cross_entropy_grad", [(), shape, shape[:-1]], dtype, input_dtypes=[dtype, dtype, "int64"])
    generated, reference = both(node, [g, logits, targets])
    u, n = unit_roundoff(dtype), shape[-1]
    scale = float(g * np.asarray(1.0 / targets.size, dtype))
    probabilities = np.nan_to_num(reference.astype(np.float64)) / scale + np.eye(n)[targets]
    # the softmax's gap (test_softmax's bound), then the subtraction at the target and the scaling, each rounded on
    # each side
    softmax_gap = probabilities * (4 * LIBRARY_ULP_GAP * u + 2 * (n + 1) * u + 2 * u)
    bound = scale * (softmax_gap + 2 * u * np.abs(probabilities - np.eye(n)[targets])) + 2 * spacing(reference, dtype)
    assert_within(generated, reference, bound)
    if logits.ndim > 1:
        last = generated.reshape(-1, n)[-1]
        assert np.all(last == -scale * np.eye(n, dtype=dtype)[targets.reshape(-1)[-1]])


def test_cross_entropy_grad_target_out_of_range_and_no_positions_as_numpy():
    node = make_node("cross_entropy_grad", [(), (3, 7), (3,)], "float32", input_dtypes=["float32", "float32", "int64"])
    source = SOURCES["cross_entropy_grad"](node, False)
    kernel = load_kernel(source.text, source.entry)
    logits, targets = cross_entropy_case((3, 7), "float32", 5)
    targets[1] = 7
    out, g = np.zeros((3, 7), np.float32), np.asarray(1.0, np.float32)
    with pytest.raises(IndexError) as generated:
        kernel(out, g, logits, targets)
    with pytest.raises(IndexError) as reference:
        get_op("cross_entropy_grad").compute_into(out, g, logits, targets)
    assert str(generated.value) == str(reference.value)
    empty = np.zeros((0, 7), np.float32)
    kernel(empty, g, empty, np.zeros((0,), np.int64))  # no positions: nothing to compute, nothing raised
