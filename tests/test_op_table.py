"""The op table: every registered op against a plain NumPy reference written here (not the op's own kernel), in
float32 and float64, with the type its rule infers equal to the type it computes; eager Tensors and the compiled
executor (over planned buffers) give the same."""

import math

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import OPS, TensorType, get_op

RNG = np.random.default_rng(0)


def floats(*shape, dtype=np.float32, low=-2.0, high=2.0):
    return np.asarray(RNG.uniform(low, high, size=shape), dtype)


def log_softmax64(x, axis):
    x = x.astype(np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def gelu64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm64(x, gamma, beta, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta


def cross_entropy64(logits, targets):
    picked = np.take_along_axis(log_softmax64(logits, -1), targets[..., None], -1)
    return np.asarray(-picked.mean())


def scatter_add64(updates, indices, num_rows):
    table = np.zeros((num_rows, updates.shape[-1]))
    for row, update in zip(indices.reshape(-1), updates.reshape(-1, updates.shape[-1])):
        table[row] += update
    return table


def unslice64(x, slices, shape):
    table = np.zeros(shape)
    table[tuple(slice(*s) for s in slices)] = x
    return table


X, Y = floats(2, 3, 4), floats(3, 1)
POSITIVE = floats(2, 3, low=0.5, high=2.0)
INDICES = np.array([[0, 4, 4], [2, 0, 1]])

# op -> list of (inputs, attrs, reference on the same inputs)
TABLE = {
    "neg": [([X], {}, lambda x: -x), ([np.array([1, -2], np.int64)], {}, lambda x: -x)],
    "exp": [([X], {}, np.exp)],
    "log": [([POSITIVE], {}, np.log)],
    "tanh": [([X.astype(np.float64)], {}, np.tanh)],
    "sqrt": [([POSITIVE], {}, np.sqrt)],
    "gelu": [([X], {}, gelu64)],
    "add": [([X, Y], {}, lambda a, b: a + b), ([np.arange(3), np.array(2)], {}, lambda a, b: a + b)],
    "sub": [([X, floats(4)], {}, lambda a, b: a - b)],
    "mul": [([X, np.float32(3)], {}, lambda a, b: a * b), ([np.arange(4, dtype=np.int32)] * 2, {}, np.multiply)],
    "div": [([X, POSITIVE[:, :1].reshape(2, 1, 1)], {}, lambda a, b: a / b)],
    "pow": [([POSITIVE, floats(3)], {}, lambda a, b: a.astype(np.float64) ** b)],
    "maximum": [([X, Y], {}, np.maximum)],
    "less": [([X, Y], {}, np.less)], "less_equal": [([X, X], {}, np.less_equal)],
    "greater": [([X, Y], {}, np.greater)], "greater_equal": [([X, Y], {}, np.greater_equal)],
    "equal": [([np.arange(4), np.array([0, 2, 2, 3])], {}, np.equal)],
    "not_equal": [([np.arange(4), np.array([0, 2, 2, 3])], {}, np.not_equal)],
    "where": [([X > 0, X, np.float32(0)], {}, np.where)],
    "cast": [([X], {"dtype": "int64"}, lambda x, dtype: x.astype(dtype)),
             ([np.arange(3)], {"dtype": "float32"}, lambda x, dtype: x.astype(dtype))],
    "sum": [([X], {"axes": (0, 2), "keepdims": False}, lambda x, axes, keepdims: x.sum(axes, keepdims=keepdims)),
            ([np.arange(6, dtype=np.int32).reshape(2, 3)], {"axes": (1,), "keepdims": True},
             lambda x, axes, keepdims: x.sum(axes, keepdims=keepdims).astype(np.int32))],
    "mean": [([X], {"axes": (1,), "keepdims": True}, lambda x, axes, keepdims: x.mean(axes, keepdims=keepdims))],
    "max": [([X], {"axes": (0, 1, 2), "keepdims": False}, lambda x, axes, keepdims: x.max(axes))],
    "matmul": [([floats(2, 1, 3, 4), floats(5, 4, 2)], {}, np.matmul),
               ([floats(3, 4, dtype=np.float64), floats(4, 2, dtype=np.float64)], {}, np.matmul)],
    "reshape": [([X], {"shape": (4, 6)}, lambda x, shape: x.reshape(shape))],
    "transpose": [([X], {"perm": (2, 0, 1)}, lambda x, perm: x.transpose(perm))],
    "broadcast_to": [([Y], {"shape": (2, 3, 4)}, lambda x, shape: np.broadcast_to(x, shape))],
    "slice": [([X], {"slices": ((1, 2, 1), (0, 3, 2), (1, 4, 1))}, lambda x, slices: x[1:2, 0:3:2, 1:4])],
    "unslice": [([floats(2, 5)], {"slices": ((1, 4, 2), (0, 5, 1)), "shape": (4, 5)}, unslice64)],
    "embedding": [([floats(5, 3), INDICES], {}, lambda w, i: w[i])],
    "scatter_add": [([floats(2, 3, 4), INDICES], {"num_rows": 6}, scatter_add64)],
    "one_hot": [([INDICES], {"num_classes": 6, "dtype": "float32"},
                 lambda i, num_classes, dtype: np.eye(num_classes, dtype=dtype)[i])],
    "constant": [([], {"value": np.array([[1.5, -np.inf]], np.float32)}, lambda value: value)],
    "softmax": [([X], {"axis": 1}, lambda x, axis: np.exp(log_softmax64(x, axis)))],
    "log_softmax": [([X * 30], {"axis": 2}, log_softmax64)],  # large logits: must not overflow
    "layer_norm": [([X, floats(4), floats(4)], {"eps": 1e-5}, layer_norm64)],
    "cross_entropy": [([floats(2, 3, 6) * 20, INDICES], {}, cross_entropy64)],
    "concat": [([floats(2, 3), floats(2, 1), floats(2, 2)], {"axis": 1},
                lambda *arrays, axis: np.concatenate(arrays, axis=axis))],
    "fused_elementwise": [([X, floats(4)], {"program": (("mul", (0, 1)), ("tanh", (2,)), ("add", (3, 0)))},
                           lambda x, b, program: np.tanh(x * b) + x)],
}
ROWS = [(op, index) for op in sorted(TABLE) for index in range(len(TABLE[op]))]


def test_every_registered_op_has_a_row():
    assert set(TABLE) == set(OPS), "add a row for each new op"


@pytest.mark.parametrize("op,index", ROWS, ids=[f"{op}-{index}" for op, index in ROWS])
def test_op_against_numpy_reference(op, index):
    inputs, attrs, reference = TABLE[op][index]
    op_def = get_op(op)
    attrs = op_def.check_attrs(attrs)
    inferred = op_def.infer_type([TensorType.of(x) for x in inputs], attrs)
    computed = op_def.evaluate(inputs, attrs)
    assert TensorType.of(computed) == inferred
    expected = np.asarray(reference(*inputs, **attrs))
    if inferred.is_float:
        tolerance = 1e-5 if inferred.dtype == "float32" else 1e-12
        np.testing.assert_allclose(computed, expected, rtol=tolerance, atol=tolerance)
    else:
        np.testing.assert_array_equal(computed, expected)
    out = np.full(inferred.shape, 7, inferred.numpy_dtype)  # the executor's path: into a dirty buffer
    op_def.evaluate_into(out, inputs, attrs)
    np.testing.assert_array_equal(out, computed)


@pytest.mark.parametrize("op", ["add", "matmul", "layer_norm", "softmax", "gelu", "embedding", "cross_entropy"])
def test_eager_and_compiled_agree_with_the_op(op):
    inputs, attrs, _ = TABLE[op][0]
    expected = get_op(op).evaluate(inputs, get_op(op).check_attrs(attrs))

    def function(*tensors):
        return tensors[0]._apply(op, tensors, attrs)

    np.testing.assert_array_equal(function(*[graphgpt.Tensor(x) for x in inputs]).data, expected)
    np.testing.assert_array_equal(graphgpt.compile(function, *inputs).run(*inputs), expected)


@pytest.mark.parametrize("op,types,attrs,message", [
    ("matmul", [(2, 3), (4, 5)], {}, r"inner dimensions differ: f32\[2,3\] @ f32\[4,5\]"),
    ("add", [(2, 3), (4,)], {}, r"do not broadcast"),
    ("reshape", [(2, 3)], {"shape": (4, 2)}, r"cannot reshape f32\[2,3\] \(6 elements\)"),
    ("transpose", [(2, 3)], {"perm": (0, 0)}, r"not a permutation"),
    ("sum", [(2, 3)], {"axes": (2,), "keepdims": False}, r"axes \(2,\) are not sorted unique axes"),
    ("layer_norm", [(2, 3), (4,), (3,)], {"eps": 1e-5}, r"gamma and beta must have the shape"),
    ("softmax", [(2, 3)], {"axis": 5}, r"axis 5 is out of range"),
    ("exp", [(2,), (2,)], {}, r"exp expects 1 inputs, got 2"),
    ("broadcast_to", [(3,)], {"shape": (2, 4)}, r"cannot broadcast"),
])
def test_type_rules_refuse_bad_inputs(op, types, attrs, message):
    with pytest.raises(graphgpt.ShapeError, match=message):
        get_op(op).infer_type([TensorType(shape, "float32") for shape in types], attrs)


@pytest.mark.parametrize("op,types,message", [
    ("add", [TensorType((2,), "float32"), TensorType((2,), "float64")], "share one dtype"),
    ("log", [TensorType((2,), "int64")], "floating-point"),
    ("embedding", [TensorType((5, 3), "float32"), TensorType((2,), "float32")], "indices must be integers"),
    ("cross_entropy", [TensorType((2, 3, 6), "float32"), TensorType((2, 4), "int64")], "targets must have"),
    ("where", [TensorType((2,), "float32")] * 3, "condition must be bool"),
])
def test_type_rules_refuse_bad_dtypes(op, types, message):
    with pytest.raises(graphgpt.ShapeError, match=message):
        get_op(op).infer_type(types, {})


def test_attribute_checks():
    with pytest.raises(graphgpt.ShapeError, match=r"missing \['keepdims'\], unknown \['keep'\]"):
        get_op("sum").check_attrs({"axes": (0,), "keep": True})
    with pytest.raises(graphgpt.ShapeError, match="attribute 'axes': expected a tuple of integers"):
        get_op("sum").check_attrs({"axes": "0", "keepdims": True})
    with pytest.raises(graphgpt.ShapeError, match="unknown op 'softmaxx'"):
        get_op("softmaxx")


@pytest.mark.parametrize("op,inputs,attrs", [
    ("embedding", [floats(5, 3), np.array([0, 5])], {}),
    ("embedding", [floats(5, 3), np.array([-1])], {}),
    ("cross_entropy", [floats(2, 4), np.array([0, 4])], {}),
])
def test_out_of_range_indices_are_refused(op, inputs, attrs):
    with pytest.raises(IndexError, match="out of range"):
        get_op(op).evaluate(inputs, attrs)
