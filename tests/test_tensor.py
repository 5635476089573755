"""graphgpt.Tensor's op-building API in eager mode against NumPy: operators with scalars and arrays on either
side, reductions with axes, reshape/permute/transpose, indexing, where, and the same expressions traced."""

import numpy as np
import pytest

import graphgpt
from graphgpt import Tensor

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 3, 4)).astype(np.float32)
Y = RNG.normal(size=(3, 4)).astype(np.float32)

EXPRESSIONS = {
    "add_scalar_right": (lambda x, y: x + 1.5, lambda x, y: x + np.float32(1.5)),
    "add_scalar_left": (lambda x, y: 1.5 + x, lambda x, y: np.float32(1.5) + x),
    "rsub": (lambda x, y: 2.0 - x, lambda x, y: np.float32(2.0) - x),
    "rdiv": (lambda x, y: 1.0 / (x * x + 1.0), lambda x, y: np.float32(1.0) / (x * x + np.float32(1.0))),
    "broadcast_mul": (lambda x, y: x * y, lambda x, y: x * y),
    "pow_int": (lambda x, y: x ** 3, lambda x, y: x ** np.float32(3)),
    "neg_max": (lambda x, y: (-x).maximum(y), lambda x, y: np.maximum(-x, y)),
    "sum_axis": (lambda x, y: x.sum(axis=-1), lambda x, y: x.sum(-1)),
    "mean_axes_keep": (lambda x, y: x.mean(axis=(0, 2), keepdims=True), lambda x, y: x.mean((0, 2), keepdims=True)),
    "max_all": (lambda x, y: x.max(), lambda x, y: x.max()),
    "matmul": (lambda x, y: x @ y.transpose(), lambda x, y: x @ y.T),
    "reshape_minus_one": (lambda x, y: x.reshape(-1, 4), lambda x, y: x.reshape(-1, 4)),
    "permute": (lambda x, y: x.permute(2, 0, 1), lambda x, y: x.transpose(2, 0, 1)),
    "transpose_pair": (lambda x, y: x.transpose(0, 2), lambda x, y: np.swapaxes(x, 0, 2)),
    "index_int": (lambda x, y: x[1], lambda x, y: x[1]),
    "index_slices": (lambda x, y: x[:, 1:, ::2], lambda x, y: x[:, 1:, ::2]),
    "index_negative_ellipsis": (lambda x, y: x[..., -1], lambda x, y: x[..., -1]),
    "index_none": (lambda x, y: x[:, None, 0], lambda x, y: x[:, None, 0]),
    "where": (lambda x, y: (x > 0).where(x, 0.0), lambda x, y: np.where(x > 0, x, np.float32(0))),
    "compare_cast": (lambda x, y: (x <= y).astype("float32").sum(), lambda x, y: (x <= y).astype(np.float32).sum()),
    "softmax": (lambda x, y: x.softmax(axis=1),
                lambda x, y: np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)),
    "broadcast_to": (lambda x, y: y.broadcast_to(2, 3, 4), lambda x, y: np.broadcast_to(y, (2, 3, 4))),
    "numpy_left_operand": (lambda x, y: np.ones(4, np.float32) * x, lambda x, y: np.ones(4, np.float32) * x),
}


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_eager_and_traced_match_numpy(name):
    ours, reference = EXPRESSIONS[name]
    expected = reference(X, Y)
    eager = ours(Tensor(X), Tensor(Y))
    assert eager.shape == np.shape(expected) and eager.dtype == np.asarray(expected).dtype.name
    np.testing.assert_allclose(eager.data, expected, rtol=1e-5, atol=1e-6)
    compiled = graphgpt.compile(ours, X, Y)
    np.testing.assert_allclose(compiled.run(X, Y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,error,match", [
    (lambda x: x.sum(axis=3), graphgpt.ShapeError, "axis 3 is out of range"),
    (lambda x: x.reshape(5, -1), graphgpt.ShapeError, "cannot reshape"),
    (lambda x: x.reshape(-1, -1), graphgpt.ShapeError, "at most one dimension may be -1"),
    (lambda x: x[0, 0, 0, 0], IndexError, "too many indices"),
    (lambda x: x[:, 5], IndexError, "index 5 is out of range for axis 1 of size 3"),
    (lambda x: x[::-1], IndexError, "steps must be positive"),
    (lambda x: x[np.array([0, 1])], IndexError, "unsupported index"),
    (lambda x: x.permute(0, 1), graphgpt.ShapeError, "permute needs 3 axes"),
    (lambda x: x.astype("int64") * 0.5, graphgpt.ShapeError, "cast the tensor first"),
])
def test_bad_use_is_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        bad(Tensor(X))


def test_tensor_refuses_unsupported_dtypes():
    with pytest.raises(graphgpt.ShapeError, match="not supported"):
        Tensor(np.array([1 + 2j]))


def test_eager_tensor_behaves_like_its_array():
    t = Tensor(np.array([1.0, 2.0], np.float32))
    assert float(t.sum()) == 3.0 and bool(t.sum() > 2) and len(t) == 2
    np.testing.assert_array_equal(np.asarray(t), [1.0, 2.0])
    assert "Tensor(" in repr(t)
