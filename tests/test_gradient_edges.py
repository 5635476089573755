"""Gradient rules at the edges of their domains (zero, -0.0, infinities, NaN, overflow, ties) and on zero-size
tensors: eager, compiled as traced and compiled with the default passes all give torch's answers, NaN exactly
where torch gives NaN, and eager equals compiled-as-traced bit for bit.

The expected values are torch's (its derivatives.yaml conventions), written out so that these tests run without
torch; with torch installed, test_edge_cases_match_torch also compares a wider set of edge cases with it directly.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest

import graphgpt
from gradient_paths import (assert_agree, compiled_value_and_gradients, eager_value_and_gradients, same_bits,
                            torch_value_and_gradients)

inf, nan = math.inf, math.nan

PATHS = {
    "eager": eager_value_and_gradients,
    "compiled as traced": functools.partial(compiled_value_and_gradients, passes=[]),
    "compiled, default passes": compiled_value_and_gradients,
}


def every_path(function, *arrays):
    """{path: (value, gradients)}, after checking that every path gives eager's bits (the default passes make
    exact rewrites only)."""
    arrays = [np.asarray(array) for array in arrays]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0), inf - inf: the edge values are the point
        results = {name: path(function, arrays) for name, path in PATHS.items()}
    eager = results["eager"]
    for name, (value, gradients) in results.items():
        for what, a, b in [("value", eager[0], value)] + [
                (f"gradient {i}", x, y) for i, (x, y) in enumerate(zip(eager[1], gradients))]:
            assert same_bits(np.asarray(a), np.asarray(b)), f"eager and {name} differ in the {what}: {a} vs {b}"
    return results


def check_gradients_equal(function, arrays, expected_gradients, expected_value=None):
    for name, (value, gradients) in every_path(function, *arrays).items():
        if expected_value is not None:
            assert_agree(value, expected_value, f"{name}: value")
        for position, (gradient, expected) in enumerate(zip(gradients, expected_gradients)):
            assert_agree(gradient, np.asarray(expected, dtype=gradient.dtype), f"{name}: gradient {position}")


# ---- pow: torch's pow_backward_self and pow_backward_exponent ------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pow_to_the_zeroth_has_zero_gradient_even_at_zero(dtype):
    """d/dx x**0 is 0 everywhere (x**0 is the constant 1), not 0 * 0**-1 = NaN at x = 0; and d/db x**b at b = 0
    is 0 where x = 0 and log(x) elsewhere."""
    x = np.array([0.0, -0.0, 2.0, -3.0], dtype)
    weights = np.array([1.0, 2.0, 3.0, 4.0], dtype)
    check_gradients_equal(lambda x, b: (x ** b * weights).sum(), [x, np.array(0.0, dtype)],
                          [[0.0, 0.0, 0.0, 0.0], nan])  # the exponent's takes 4 log(-3), NaN as in torch
    check_gradients_equal(lambda x, b: (x ** b * weights[:3]).sum(), [x[:3], np.array(0.0, dtype)],
                          [[0.0, 0.0, 0.0], 3.0 * math.log(2.0)])


def test_pow_of_zero_base_has_torchs_gradients():
    """0**b: d/da = b 0**(b-1) (0 where b == 0, infinite below 1); d/db is 0 for b >= 0 (torch's convention),
    -inf * g for b < 0 where 0**b is inf."""
    b = np.array([0.0, 1.0, 2.0, -1.0, 0.5, nan])
    check_gradients_equal(lambda a, b: (a ** b).sum(), [np.zeros(6), b],
                          [[0.0, 1.0, 0.0, -inf, inf, nan], [0.0, 0.0, 0.0, -inf, 0.0, nan]])


def test_pow_with_a_broadcast_zero_exponent():
    """The masks broadcast with the gradient: a scalar base, a vector of exponents, and the other way round."""
    check_gradients_equal(lambda a, b: (a ** b).sum(), [np.array(0.0), np.array([0.0, 0.0, 1.0])],
                          [1.0, [0.0, 0.0, 0.0]])
    check_gradients_equal(lambda a, b: (a ** b).sum(), [np.array([0.0, 0.0, 1.0]), np.array(0.0)],
                          [[0.0, 0.0, 0.0], 0.0])


# ---- maximum: torch splits a tie in halves -------------------------------------------------------------------


def test_maximum_splits_ties_and_gives_nan_its_gradient_on_both_sides():
    a = np.array([1.0, 2.0, 0.0, nan, -inf, inf, -0.0])
    b = np.array([1.0, 1.0, 3.0, 0.0, -inf, inf, 0.0])
    weights = np.arange(1.0, 8.0)
    check_gradients_equal(lambda a, b: (a.maximum(b) * weights).sum(), [a, b],
                          [[0.5, 2.0, 0.0, 4.0, 2.5, 3.0, 3.5], [0.5, 0.0, 3.0, 4.0, 2.5, 3.0, 3.5]])


# ---- zero-size tensors ----------------------------------------------------------------------------------------


def sum_to(array: np.ndarray, shape) -> np.ndarray:
    """NumPy's un-broadcast: array summed over the axes that broadcasting added or stretched from 1."""
    leading = array.ndim - len(shape)
    summed = array.sum(axis=tuple(range(leading)))
    return summed.sum(axis=tuple(axis for axis, size in enumerate(shape) if size == 1), keepdims=True)


@pytest.mark.parametrize("axes", [(1,), (1, 2), None])
def test_mean_over_an_empty_axis_is_nan_and_its_gradient_empty(axes):
    """torch: the mean of no elements is NaN; the gradient of a zero-size x is zero-size. It raised
    ZeroDivisionError in the gradient rule."""
    x = np.zeros((2, 0, 3), np.float32)
    for name, (value, (gradient,)) in every_path(lambda x: x.mean(axes).sum(), x).items():
        assert np.isnan(value), name
        assert gradient.shape == x.shape and gradient.dtype == x.dtype, name


def test_mean_over_an_empty_axis_gives_a_nan_per_result_element_without_warnings():
    x = np.zeros((2, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mean warned twice ("Mean of empty slice", "invalid value")
        np.testing.assert_array_equal(graphgpt.Tensor(x).mean(1).data, [nan, nan])
        for passes in ([], None):
            np.testing.assert_array_equal(graphgpt.compile(lambda x: x.mean(1), x, passes=passes).run(x),
                                          [nan, nan])


def test_cross_entropy_over_no_positions_is_nan_without_warnings():
    """torch: the mean over no positions is NaN; np.mean said so with two RuntimeWarnings."""
    logits, targets = np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(graphgpt.Tensor(logits).cross_entropy(targets).data)
        for passes in ([], None):
            assert np.isnan(graphgpt.compile(lambda x, t: x.cross_entropy(t), logits, targets,
                                             passes=passes).run(logits, targets))


def test_embedding_of_zero_width_rows_and_its_gradient():
    table = np.zeros((3, 0), np.float32)
    check_gradients_equal(lambda table: table.embedding(np.array([[0, 2], [1, 1]])).sum(), [table],
                          [np.zeros((3, 0))], expected_value=0.0)


@pytest.mark.parametrize("shapes", [((2, 3, 0), (0, 4)), ((2, 3, 2), (2, 0)), ((2, 0, 3), (3, 4)),
                                    ((0, 3, 2), (2, 4)), ((2, 1, 3, 0), (5, 0, 2))])
def test_matmul_with_an_empty_axis_and_its_gradient(shapes):
    """(2, 3, 0) @ (0, 4) is zeros; the default passes flatten it to one (6, 0) @ (0, 4) GEMM (which made a
    (0, 0) matrix and failed); the gradient rule's flattened weight gradient reshaped to (-1, 0) and raised."""
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=shape) for shape in shapes)
    weights = rng.normal(size=np.matmul(a, b).shape)
    expected_a = sum_to(weights @ np.swapaxes(b, -1, -2), a.shape)
    expected_b = sum_to(np.swapaxes(a, -1, -2) @ weights, b.shape)
    check_gradients_equal(lambda a, b: ((a @ b) * weights).sum(), [a, b], [expected_a, expected_b],
                          expected_value=(np.matmul(a, b) * weights).sum())


def test_flattening_a_batched_matmul_with_an_empty_inner_axis():
    """simplify's (B, T, k) @ (k, n) -> (B*T, k) @ (k, n) (a fast-math rewrite: BLAS rounds a bigger GEMM
    differently) took B*T as size // max(k, 1) = 0 when k = 0, and the reshape back failed."""
    a, b = np.zeros((2, 3, 0), np.float32), np.ones((0, 4), np.float32)
    compiled = graphgpt.compile(lambda a, b: a @ b, a, b, fast_math={"reassociate"})
    [simplified] = [stage for stage in compiled.program.whole.stages if stage.name == "simplify"]
    assert simplified.summary["flatten batched matmul"] == 1  # the rule did fire
    np.testing.assert_array_equal(compiled.run(a, b), np.zeros((2, 3, 4)))
    value, gradients = compiled_value_and_gradients(lambda a, b: (a @ b).sum(), [a, b], fast_math={"reassociate"})
    assert value == 0 and gradients[0].shape == a.shape and gradients[1].shape == b.shape


def test_check_gradients_passes_a_zero_size_input():
    report = graphgpt.check_gradients(lambda x, y: x.sum() + (y * y).sum(), np.zeros((2, 0)), np.ones(3))
    assert report.passed, str(report)


# ---- every rule at its edges, against torch ---------------------------------------------------------------------

EDGE = np.array([0.0, -0.0, 1.0, -1.0, inf, -inf, nan, 1e-30, 1e30, 1e-310, 0.5, -2.5])
WEIGHTS = np.cos(np.arange(EDGE.size))
GRID = (EDGE[:, None] + np.zeros((1, EDGE.size)), EDGE[None, :] + np.zeros((EDGE.size, 1)))


def weighted(y):
    """sum(y * w) for fixed weights w: every element of y matters to the gradient, each differently."""
    return (y * np.cos(np.arange(y.size)).reshape(y.shape).astype(y.dtype)).sum()


def _unary(op):
    return lambda x: weighted(x._apply(op, (x,)))


def _binary(op):
    return lambda a, b: weighted(a._apply(op, (a, b)))


MASKED = np.array([[-inf, -inf, -inf], [0.0, -inf, 1.0], [inf, 0.0, 1.0], [nan, 0.0, 1.0], [1e308, -1e308, 0.0]])
EDGE_CASES = {  # name -> (function, arrays)
    **{f"{op} {dtype}": (_unary(op), [EDGE.astype(dtype)]) for op in ("neg", "exp", "log", "tanh", "sqrt", "gelu")
       for dtype in ("float64", "float32")},
    **{f"{op} grid": (_binary(op), list(GRID)) for op in ("add", "sub", "mul", "div", "pow", "maximum")},
    **{f"x ** {power}": (lambda x, power=power: weighted(x ** power), [EDGE])
       for power in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, -1.0, -0.5)},
    "0 ** b": (lambda a, b: weighted(a ** b), [np.zeros(EDGE.size), EDGE]),
    "softmax": (lambda x: weighted(x.softmax(-1)), [MASKED]),
    "log_softmax, partly masked": (lambda x: weighted(x[1:2].log_softmax(-1)), [MASKED]),
    "cross_entropy": (lambda x: x.cross_entropy(np.array([0, 1, 2, 1])), [MASKED[1:]]),
    "cross_entropy, masked target": (lambda x: x.cross_entropy(np.array([1, 0])), [MASKED[1:3]]),
    "layer_norm, constant rows": (lambda x, gamma, beta: weighted(x.layer_norm(gamma, beta)),
                                  [np.full((2, 4), 0.25), np.ones(4), np.zeros(4)]),
    "layer_norm, one feature": (lambda x, gamma, beta: weighted(x.layer_norm(gamma, beta)),
                                [np.array([[1.0], [-2.0]]), np.ones(1), np.zeros(1)]),
    "layer_norm, infinities": (lambda x, gamma, beta: weighted(x.layer_norm(gamma, beta)),
                               [np.array([[1.0, inf, 2.0], [nan, 0.0, 1.0]]), np.ones(3), np.zeros(3)]),
    "max, ties and NaN": (lambda x: weighted(x.max(1)), [np.array([[1.0, 1.0, 0.0], [nan, 1.0, 2.0],
                                                                   [-inf, -inf, -inf], [0.0, -0.0, -1.0]])]),
    "mean, infinities": (lambda x: weighted(x.mean(1)), [np.array([[1.0, inf, 0.0], [inf, -inf, 2.0]])]),
    "sum, infinities": (lambda x: weighted(x.sum(0)), [np.array([[1.0, inf, 0.0], [inf, -inf, nan]])]),
    "matmul, infinities": (lambda a, b: weighted(a @ b), [np.array([[inf, 0.0], [1.0, 2.0]]),
                                                          np.array([[0.0, 1.0], [nan, 1.0]])]),
    "where, NaN branch": (lambda a, b: weighted((a > 0.0).where(a, b)), [EDGE, EDGE[::-1].copy()]),
    "embedding, infinities": (lambda table: weighted(table.embedding(np.array([0, 2, 2]))),
                              [np.array([[inf, 1.0], [nan, 0.0], [-0.0, 1e308]])]),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_match_torch(name):
    pytest.importorskip("torch")
    function, arrays = EDGE_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        torch_value, torch_gradients = torch_value_and_gradients(function, arrays)
    tolerance = 1e-5 if arrays[0].dtype == np.float32 else 1e-9
    for path, (value, gradients) in every_path(function, *arrays).items():
        assert_agree(value, torch_value, f"{path}: value", rtol=tolerance)
        for position, (gradient, expected) in enumerate(zip(gradients, torch_gradients)):
            assert_agree(gradient, expected, f"{path}: gradient {position}", rtol=tolerance)


@pytest.mark.parametrize("dtype, magnitude", [("float64", 1e150), ("float32", 1e15)])
def test_gelu_gradient_stays_finite_where_x_cubed_overflows(dtype, magnitude):
    x = np.array([magnitude, -magnitude], dtype)
    check_gradients_equal(lambda x: x.gelu().sum(), [x], [[1.0, 0.0]])
