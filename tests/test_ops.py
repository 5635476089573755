"""The op table: every op in graphgpt.ir.OPS against a plain NumPy reference (tests/op_references.py: float64 loops
and formulas, never the op's own kernel), with its inferred type equal to the type it computes, the executor's
evaluate_into path equal to evaluate, and eager and compiled runs equal to both. A registered op with no row in
CASES fails test_every_op_has_a_row. Refusals (bad inputs, attributes, indices) are in test_op_refusals.py.

ZERO_SIZE_CASES adds rows with an axis of size 0 in each position an op allows; these also run forward and
backward eagerly, compiled as traced and with the default passes, and against PyTorch when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import OPS, TensorType
from op_references import (gelu64, gelu_grad64, layer_norm_grad64, layer_norm_gamma_grad64, matmul64, per_row,
                           softmax_row, log_softmax_row, layer_norm64, cross_entropy64, softmax_grad64,
                           cross_entropy_grad64, gather_rows, scatter_add64, cache_write64, attention64,
                           attention_grad64, index_grid, unslice64, concat64, mean64)
from gradient_paths import (assert_agree, compiled_value_and_gradients, eager_value_and_gradients, same_bits,
                            torch_value_and_gradients)

# ---- inputs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rand:
    """A random input of a given shape and dtype, values drawn uniformly from [low, high)."""

    shape: tuple[int, ...]
    dtype: str
    low: float = -2.0
    high: float = 2.0

    def make(self, rng: np.random.Generator) -> np.ndarray:
        if self.dtype == "bool":
            return rng.random(self.shape) < 0.5
        if self.dtype in ("int32", "int64"):
            return rng.integers(self.low, self.high, size=self.shape, dtype=self.dtype)
        return rng.uniform(self.low, self.high, size=self.shape).astype(self.dtype)

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)


def f32(*shape, low=-2.0, high=2.0): return Rand(shape, "float32", low, high)
def f64(*shape, low=-2.0, high=2.0): return Rand(shape, "float64", low, high)
def i32(*shape, low=-5, high=5): return Rand(shape, "int32", low, high)
def i64(*shape, low=-5, high=5): return Rand(shape, "int64", low, high)
def boolean(*shape): return Rand(shape, "bool")


POSITIVE = {"low": 0.5, "high": 2.0}  # for log, sqrt, pow bases and divisors


def make(spec, rng) -> np.ndarray:
    """A Rand drawn from rng, or a literal array as given."""
    return spec.make(rng) if isinstance(spec, Rand) else np.asarray(spec)


def widen(array: np.ndarray) -> np.ndarray:
    """Float inputs as float64 (exact), so every reference computes in float64."""
    return array.astype(np.float64) if array.dtype.kind == "f" else array


# ---- the table ---------------------------------------------------------------------------------------------------


@dataclass
class Case:
    op: str
    inputs: tuple
    reference: Callable[..., Any]
    attrs: dict = field(default_factory=dict)
    result_dtype: str | None = None  # when it is neither attrs["dtype"] nor the first input's dtype

    @property
    def id(self) -> str:
        inputs = ",".join(str(x.type if isinstance(x, Rand) else TensorType.of(x)) for x in self.inputs)
        attrs = ",".join(f"{name}={TensorType.of(value) if isinstance(value, np.ndarray) else value}"
                         for name, value in self.attrs.items())
        return f"{self.op}({inputs}{';' if attrs else ''}{attrs})".replace(" ", "")


def case(op, *inputs, ref, result_dtype=None, **attrs) -> Case:
    return Case(op, inputs, ref, attrs, result_dtype)


CASES: list[Case] = []

# Elementwise maps.
for _op, _ref, _inputs in [
    ("neg", np.negative, [f32(2, 3), f64(), i32(4), i64(2, 2)]),
    ("exp", np.exp, [f32(2, 3, 4), f64()]),
    ("log", np.log, [f32(3, 4, **POSITIVE), f64(5, **POSITIVE)]),
    ("tanh", np.tanh, [f32(2, 3), f64(4)]),
    ("sqrt", np.sqrt, [f32(3, 4, **POSITIVE), f64(**POSITIVE)]),
    ("gelu", gelu64, [f32(3, 5, low=-4, high=4), f64(4, low=-4, high=4), f32()]),
    ("relu", lambda x: np.where(x > 0, x, 0.0), [f32(2, 3), f64(4), f32()]),
    # tanh form of the logistic function: exact and without overflow, unlike the kernel's select of exp(-|x|)
    ("sigmoid", lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)), [f32(3, 5, low=-100, high=100), f64(4, low=-800, high=800),
                                                          f64(2, 3)]),
]:
    CASES += [case(_op, x, ref=_ref) for x in _inputs]

# Broadcasting binary arithmetic. Ints only where the op allows them (not div or pow).
_FLOAT_PAIRS = [(f32(2, 1, 4), f32(3, 1)), (f64(3), f64()), (f64(), f64(2, 2))]
_INT_PAIRS = [(i32(2, 3), i32(3)), (i64(), i64()), (i64(4), i64(2, 1))]
for _op, _ref, _pairs in [
    ("add", np.add, _FLOAT_PAIRS + _INT_PAIRS),
    ("sub", np.subtract, _FLOAT_PAIRS + _INT_PAIRS),
    ("mul", np.multiply, _FLOAT_PAIRS + _INT_PAIRS),
    ("maximum", lambda a, b: np.where(a >= b, a, b), _FLOAT_PAIRS + _INT_PAIRS),
    ("div", lambda a, b: a / b, [(f32(2, 1, 4), f32(3, 1, **POSITIVE)), (f64(), f64(3, **POSITIVE)),
                                 (f64(2, 2), f64(**POSITIVE))]),
    ("pow", lambda a, b: np.exp(b * np.log(a)), [(f32(2, 1, 4, **POSITIVE), f32(3, 1)),
                                                  (f64(3, **POSITIVE), f64()), (f64(**POSITIVE), f64(2))]),
]:
    CASES += [case(_op, a, b, ref=_ref) for a, b in _pairs]

# Comparisons give bool; small int ranges so that ties (equal) actually occur.
for _op, _ref in [("less", np.less), ("less_equal", np.less_equal), ("greater", np.greater),
                  ("greater_equal", np.greater_equal), ("equal", np.equal), ("not_equal", np.not_equal)]:
    CASES += [case(_op, a, b, ref=_ref, result_dtype="bool") for a, b in [
        (f32(2, 1, 4), f32(3, 1)), (f64(), f64(3)), (i32(6, low=0, high=3), i32(6, low=0, high=3)),
        (i64(2, 3, low=0, high=3), i64(3, low=0, high=3)), (boolean(4), boolean(4))]]

CASES += [
    case("where", boolean(2, 1, 4), f32(3, 1), f32(), ref=np.where, result_dtype="float32"),
    case("where", boolean(), i64(2, 3), i64(3), ref=np.where, result_dtype="int64"),
    case("where", boolean(3), f64(3), f64(3), ref=np.where, result_dtype="float64"),
    case("where", boolean(2, 2), boolean(2, 2), boolean(2), ref=np.where, result_dtype="bool"),

    # astype truncates floats towards zero.
    *[case("cast", x, dtype=to, ref=lambda x, dtype: x.astype(dtype)) for x, to in [
        (f32(2, 3, low=-5, high=5), "int64"), (f64(4, low=-5, high=5), "int32"), (i32(3), "float32"),
        (i64(), "float64"), (f64(2, 2), "float32"), (f32(3), "float64"), (i64(5, low=-1, high=2), "bool"),
        (boolean(3), "float32"), (i32(4), "int64")]],

    # Reductions: several axes, none, all, keepdims both ways, 0-d, an empty reduced axis.
    *[case("sum", x, axes=axes, keepdims=keep, ref=lambda x, axes, keepdims: x.sum(axes, keepdims=keepdims))
      for x, axes, keep in [
          (f32(2, 3, 4), (0, 2), False), (f64(2, 3, 4), (1,), True), (i32(3, 4), (0, 1), False),
          (i64(2, 3), (), False), (f32(), (), True), (f32(2, 0, 3), (1,), False), (i64(2, 3, 4), (0, 1, 2), True)]],
    *[case("mean", x, axes=axes, keepdims=keep, ref=mean64) for x, axes, keep in [
        (f32(2, 3, 4), (1,), True), (f64(2, 3, 4), (0, 2), False), (f32(5), (0,), False), (f64(3, 2), (), True)]],
    *[case("max", x, axes=axes, keepdims=keep, ref=lambda x, axes, keepdims: x.max(axes, keepdims=keepdims))
      for x, axes, keep in [
          (f32(2, 3, 4), (2,), False), (f64(2, 3, 4), (0, 1, 2), True), (i32(3, 4), (0,), True),
          (i64(), (), False), (boolean(3, 2), (1,), False), (f32(0, 3), (1,), False)]],

    case("matmul", f32(2, 1, 3, 4), f32(5, 4, 2), ref=matmul64),
    case("matmul", f64(3, 4), f64(4, 2), ref=matmul64),
    case("matmul", f64(4, 2, 3), f64(3, 5), ref=matmul64),
    case("matmul", f32(2, 3, 0), f32(0, 4), ref=matmul64),  # empty inner axis: zeros
    case("matmul", i64(2, 3), i64(3, 2), ref=matmul64),  # integers, as torch's CPU matmul takes them
    case("matmul", i32(2, 2, 3), i32(3, 4), ref=matmul64),
    case("matmul_permuted", f32(2, 3, 4, 5), f32(2, 3, 5, 6), perm=(0, 2, 1, 3),
         ref=lambda a, b, perm: np.transpose(matmul64(a, b), perm)),
    case("matmul_permuted", f64(3, 2, 4), f64(1, 4, 5), perm=(1, 0, 2),
         ref=lambda a, b, perm: np.transpose(matmul64(a, b), perm)),

    *[case("reshape", x, shape=shape, ref=lambda x, shape: x.ravel().reshape(shape)) for x, shape in [
        (f32(2, 3, 4), (4, 6)), (i64(6), (2, 1, 3)), (i32(), (1, 1)), (f64(2, 3), (6,)), (f32(1, 1), ())]],
    *[case("transpose", x, perm=perm, ref=lambda x, perm: np.einsum(x, list(range(x.ndim)), list(perm)))
      for x, perm in [(f32(2, 3, 4), (2, 0, 1)), (i32(2, 3), (1, 0)), (f64(), ()), (i64(2, 3, 4, 5), (1, 0, 3, 2))]],
    *[case("broadcast_to", x, shape=shape, ref=lambda x, shape: x + np.zeros(shape, x.dtype)) for x, shape in [
        (f32(3, 1), (2, 3, 4)), (i64(), (2, 2)), (f64(1, 4), (1, 4)), (i32(2, 1), (2, 0))]],
    *[case("slice", x, slices=slices, ref=lambda x, slices: x[index_grid(slices)]) for x, slices in [
        (f32(2, 3, 4), ((1, 2, 1), (0, 3, 2), (1, 4, 1))), (i32(5), ((0, 5, 3),)), (i64(5), ((4, 1, 1),)),
        (f64(4, 4), ((0, 4, 2), (3, 4, 1))), (f32(), ())]],
    case("unslice", f32(2, 5), slices=((1, 4, 2), (0, 5, 1)), shape=(4, 5), ref=unslice64),
    case("unslice", f64(1), slices=((2, 3, 1),), shape=(4,), ref=unslice64),
    case("unslice", i32(2, 2), slices=((0, 2, 1), (1, 4, 2)), shape=(2, 4), ref=unslice64),

    case("embedding", f32(5, 3), i64(2, 3, low=0, high=5), ref=gather_rows),
    case("embedding", f64(4, 2), i32(low=0, high=4), ref=gather_rows),
    case("embedding", i32(6, 2), i64(4, low=0, high=6), ref=gather_rows),
    case("embedding", f32(3, 2), i64(0, low=0, high=3), ref=gather_rows),
    case("cache_write", f32(2, 3, 6, 4), f32(2, 3, 2, 4), i64(2, low=0, high=5), ref=cache_write64),
    case("cache_write", f64(1, 2, 5, 3), f64(1, 2, 1, 3), i32(1, low=0, high=5), ref=cache_write64),
    case("cache_write", f32(3, 1, 4, 2), f32(3, 1, 4, 2), i64(3, low=0, high=1), ref=cache_write64),  # n = length
    case("attention", f32(2, 3, 5, 4), f32(2, 3, 5, 4), f32(2, 3, 5, 4), f32(5, 5), scale=0.5, ref=attention64),
    case("attention", f64(2, 4, 3), f64(2, 6, 3), f64(2, 6, 2), f64(2, 1, 6), scale=1.5, ref=attention64),
    case("attention_grad", *[f32(2, 3, 5, 4)] * 3, f32(5, 5), *[f32(2, 3, 5, 4)] * 2, scale=0.5,
         ref=attention_grad64),
    case("attention_grad", *[f64(3, 4, 2)] * 3, f64(1, 4), *[f64(3, 4, 2)] * 2, scale=0.25, ref=attention_grad64),
    case("scatter_add", f32(2, 3, 4), i64(2, 3, low=0, high=4), num_rows=6, ref=scatter_add64),  # repeated rows
    case("scatter_add", f64(4, 2), i32(4, low=0, high=3), num_rows=3, ref=scatter_add64),
    case("scatter_add", f64(3), i64(low=0, high=2), num_rows=2, ref=scatter_add64),
    *[case("one_hot", i, num_classes=n, dtype=dtype,
           ref=lambda i, num_classes, dtype: (i[..., None] == np.arange(num_classes)).astype(dtype))
      for i, n, dtype in [(i64(2, 3, low=0, high=6), 6, "float32"), (i32(4, low=0, high=3), 3, "int64"),
                          (i64(low=0, high=4), 4, "bool"), (i32(3, low=0, high=2), 2, "float64")]],
    *[case("constant", value=value, ref=lambda value: value.copy(), result_dtype=value.dtype.name) for value in [
        np.array([[1.5, -np.inf]], np.float32), np.array(7, np.int64), np.array([True, False]),
        np.arange(3, dtype=np.float64)]],
    *[case("reciprocal_size", size=size, dtype=dtype, ref=lambda size, dtype: np.asarray(1.0 / size, dtype),
           result_dtype=dtype) for size, dtype in [(4, "float32"), (3, "float64"), (1, "float32")]],

    case("softmax", f32(2, 3, 4), axis=1, ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("softmax", f64(5), axis=0, ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("softmax", np.array([[-np.inf] * 3, [0.5, -np.inf, 2.0]], np.float32), axis=1,  # masked rows
         ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("softmax", f32(2, 0), axis=1, ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("log_softmax", f32(2, 3, 4, low=-60, high=60), axis=2,  # large logits: no overflow
         ref=lambda x, axis: per_row(log_softmax_row, x, axis)),
    case("log_softmax", f64(3, 5), axis=0, ref=lambda x, axis: per_row(log_softmax_row, x, axis)),
    case("log_softmax", f64(2, 0), axis=1, ref=lambda x, axis: per_row(log_softmax_row, x, axis)),
    case("layer_norm", f32(2, 3, 8), f32(8), f32(8), eps=1e-5, ref=layer_norm64),
    case("layer_norm", f64(4), f64(4), f64(4), eps=1e-3, ref=layer_norm64),
    case("layer_norm", f32(3, 1), f32(1), f32(1), eps=0.1, ref=layer_norm64),  # one feature: variance 0
    # Backward kernels (the gradients of gelu, softmax, cross_entropy and layer_norm).
    case("gelu_grad", f32(3, 5), f32(3, 5, low=-4, high=4), ref=gelu_grad64),
    case("gelu_grad", f64(4), f64(4, low=-4, high=4), ref=gelu_grad64),
    case("gelu_grad", f32(), f32(), ref=gelu_grad64),
    case("layer_norm_grad", f32(2, 3, 8), f32(2, 3, 8), f32(8), eps=1e-5, ref=layer_norm_grad64),
    case("layer_norm_grad", f64(4), f64(4), f64(4), eps=1e-3, ref=layer_norm_grad64),
    case("layer_norm_grad", f32(3, 1), f32(3, 1), f32(1), eps=0.1, ref=layer_norm_grad64),  # one feature
    case("softmax_grad", f32(2, 3, 6), Rand((2, 3, 6), "float32", 0.0, 0.4), axis=2, ref=softmax_grad64),
    case("softmax_grad", f64(4, 5), Rand((4, 5), "float64", 0.0, 0.4), axis=0, ref=softmax_grad64),
    case("softmax_grad", f32(5), Rand((5,), "float32", 0.0, 0.4), axis=0, ref=softmax_grad64),
    case("cross_entropy_grad", f32(), f32(2, 3, 6, low=-20, high=20), i64(2, 3, low=0, high=6),
         ref=cross_entropy_grad64),
    case("cross_entropy_grad", f64(), f64(4, 5), i32(4, low=0, high=5), ref=cross_entropy_grad64),
    case("cross_entropy_grad", f32(), f32(5), i64(low=0, high=5), ref=cross_entropy_grad64),
    case("layer_norm_gamma_grad", f32(2, 3, 8), f32(2, 3, 8), eps=1e-5, ref=layer_norm_gamma_grad64),
    case("layer_norm_gamma_grad", f64(4), f64(4), eps=1e-3, ref=layer_norm_gamma_grad64),
    case("layer_norm_gamma_grad", f32(3, 1), f32(3, 1), eps=0.1, ref=layer_norm_gamma_grad64),
    case("cross_entropy", f32(2, 3, 6, low=-20, high=20), i64(2, 3, low=0, high=6), ref=cross_entropy64),
    case("cross_entropy", f64(4, 5), i32(4, low=0, high=5), ref=cross_entropy64),
    case("cross_entropy", f32(5), i64(low=0, high=5), ref=cross_entropy64),

    # The keep mask is a uniform draw from the key's generator at or above p, scaled by 1 / (1 - p).
    *[case("dropout_mask", i64(low=0, high=1 << 40), shape=shape, p=p, dtype=dtype,
           ref=lambda key, shape, p, dtype: np.where(np.random.default_rng(int(key)).random(shape) < p, 0.0,
                                                     1.0 / (1.0 - p)))
      for shape, p, dtype in [((3, 4), 0.25, "float32"), ((2, 3, 5), 0.5, "float64"), ((), 0.0, "float32"),
                              ((4, 0), 0.5, "float32")]],

    case("concat", f32(2, 3), f32(2, 1), f32(2, 2), axis=1, ref=concat64),
    case("concat", i64(1, 3), i64(2, 3), axis=0, ref=concat64),
    case("concat", f64(3), axis=0, ref=concat64),
    case("concat", boolean(2, 2, 1), boolean(2, 2, 0), boolean(2, 2, 2), axis=2, ref=concat64),

    case("fused_elementwise", f32(2, 3, 4), f32(4), program=(("mul", (0, 1)), ("tanh", (2,)), ("add", (3, 0))),
         ref=lambda x, b, program: np.tanh(x * b) + x),
    case("fused_elementwise", f64(), f64(3, **POSITIVE), program=(("exp", (0,)), ("sqrt", (1,)), ("div", (2, 3))),
         ref=lambda a, b, program: np.exp(a) / np.sqrt(b)),
    case("fused_elementwise", i32(2, 3), i32(3), program=(("neg", (0,)), ("maximum", (2, 1)), ("mul", (3, 3))),
         ref=lambda a, b, program: np.maximum(-a, b) ** 2),
    # Larger than one cache block (2**17 elements), with a broadcast input, so the blocking is exercised.
    case("fused_elementwise", f32(3, 150_000), f32(150_000),
         program=(("sub", (0, 1)), ("mul", (2, 2)), ("tanh", (3,)), ("add", (4, 0))),
         ref=lambda a, b, program: np.tanh((a - b) ** 2) + a),
]

# Zero-size tensors: every op with an axis of size 0 in each position where one may be (a broadcast against 1, a
# reduced or kept axis, a matmul's batch, row, inner or column axis, an empty table, row or index set). The
# reduction of an empty axis is a sum's 0 and a mean's NaN, as in torch.
ZERO_SIZE_CASES: list[Case] = [
    *[case(_op, x, ref=_ref) for _op, _ref in [("neg", np.negative), ("exp", np.exp), ("log", np.log),
                                               ("tanh", np.tanh), ("sqrt", np.sqrt), ("gelu", gelu64)]
      for x in [f32(0), f64(2, 0), f32(0, 3)]],
    *[case(_op, a, b, ref=_ref) for _op, _ref in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                                                  ("div", np.divide), ("pow", np.power),
                                                  ("maximum", np.maximum)]
      for a, b in [(f32(0, 3), f32(3)), (f64(1, 3), f64(0, 1)), (f32(), f32(2, 0)), (f64(0), f64(0))]],
    *[case(_op, a, b, ref=_ref, result_dtype="bool") for _op, _ref in [("less", np.less), ("equal", np.equal)]
      for a, b in [(f32(0, 3), f32(3)), (i64(2, 1), i64(0))]],
    case("where", boolean(0, 1), f32(3), f32(), ref=np.where, result_dtype="float32"),
    case("where", boolean(2, 1), f64(2, 0), f64(1), ref=np.where, result_dtype="float64"),
    case("cast", f32(0, 2), dtype="int64", ref=lambda x, dtype: x.astype(dtype)),
    case("cast", i32(3, 0), dtype="float64", ref=lambda x, dtype: x.astype(dtype)),
    *[case("sum", x, axes=axes, keepdims=keep, ref=lambda x, axes, keepdims: x.sum(axes, keepdims=keepdims))
      for x, axes, keep in [(f32(0, 3), (0,), False), (f64(0, 3), (1,), True), (f32(2, 0, 3), (0, 2), False),
                            (f64(2, 0), (1,), False)]],
    *[case("mean", x, axes=axes, keepdims=keep, ref=mean64) for x, axes, keep in [
        (f32(2, 0, 3), (1,), False), (f64(2, 0, 3), (0, 2), True), (f32(3, 0), (1,), True),
        (f64(0, 4), (0, 1), True), (f32(0, 4), (1,), False)]],
    case("max", f32(0, 3), axes=(1,), keepdims=False, ref=lambda x, axes, keepdims: x.max(axes, keepdims=keepdims)),
    case("max", f64(2, 0), axes=(0,), keepdims=True, ref=lambda x, axes, keepdims: x.max(axes, keepdims=keepdims)),
    *[case("matmul", a, b, ref=matmul64) for a, b in [
        (f32(0, 3, 4), f32(4, 2)), (f64(2, 0, 4), f64(4, 2)), (f32(2, 3, 4), f32(4, 0)), (f64(3, 0), f64(0, 2)),
        (f32(2, 1, 3, 0), f32(5, 0, 2)), (f64(0, 3, 4), f64(1, 4, 2))]],
    case("matmul_permuted", f32(2, 0, 3, 4), f32(2, 0, 4, 5), perm=(0, 2, 1, 3),
         ref=lambda a, b, perm: np.transpose(matmul64(a, b), perm)),
    case("reshape", f32(2, 0, 3), shape=(0, 3), ref=lambda x, shape: x.ravel().reshape(shape)),
    case("reshape", f64(0), shape=(3, 0, 1), ref=lambda x, shape: x.ravel().reshape(shape)),
    case("transpose", f32(2, 0, 3), perm=(2, 0, 1), ref=lambda x, perm: np.transpose(x, perm)),
    case("broadcast_to", f32(1, 3), shape=(0, 3), ref=lambda x, shape: x + np.zeros(shape, x.dtype)),
    case("broadcast_to", f64(0, 1), shape=(2, 0, 4), ref=lambda x, shape: x + np.zeros(shape, x.dtype)),
    case("slice", f32(0, 3), slices=((0, 0, 1), (1, 3, 1)), ref=lambda x, slices: x[index_grid(slices)]),
    case("slice", f64(4, 3), slices=((2, 2, 1), (0, 3, 2)), ref=lambda x, slices: x[index_grid(slices)]),
    case("unslice", f32(0, 5), slices=((2, 2, 1), (0, 5, 1)), shape=(4, 5), ref=unslice64),
    case("unslice", f64(2, 0), slices=((0, 2, 1), (0, 0, 1)), shape=(2, 0), ref=unslice64),
    case("embedding", f32(3, 0), i64(2, 2, low=0, high=3), ref=gather_rows),
    case("embedding", f64(0, 2), i64(0, low=0, high=1), ref=gather_rows),
    case("scatter_add", f32(0, 3), i64(0, low=0, high=4), num_rows=4, ref=scatter_add64),
    case("scatter_add", f64(2, 0), i64(2, low=0, high=3), num_rows=3, ref=scatter_add64),
    case("scatter_add", f64(0, 2), i32(0, low=0, high=1), num_rows=0, ref=scatter_add64),
    *[case("one_hot", i, num_classes=3, dtype="float32",
           ref=lambda i, num_classes, dtype: (i[..., None] == np.arange(num_classes)).astype(dtype))
      for i in [i64(0, low=0, high=3), i32(2, 0, low=0, high=3)]],
    case("constant", value=np.zeros((0, 3), np.float32), ref=lambda value: value.copy(), result_dtype="float32"),
    case("softmax", f32(0, 3), axis=1, ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("softmax", f64(0, 3), axis=0, ref=lambda x, axis: per_row(softmax_row, x, axis)),
    case("log_softmax", f32(2, 0, 3), axis=2, ref=lambda x, axis: per_row(log_softmax_row, x, axis)),
    case("log_softmax", f64(0, 3), axis=0, ref=lambda x, axis: per_row(log_softmax_row, x, axis)),
    case("layer_norm", f32(0, 4), f32(4), f32(4), eps=1e-5, ref=layer_norm64),
    case("layer_norm", f64(3, 0), f64(0), f64(0), eps=1e-5, ref=layer_norm64),
    case("gelu_grad", f32(0, 3), f32(0, 3), ref=gelu_grad64),
    case("layer_norm_grad", f32(0, 4), f32(0, 4), f32(4), eps=1e-5, ref=layer_norm_grad64),
    case("layer_norm_grad", f64(3, 0), f64(3, 0), f64(0), eps=1e-5, ref=layer_norm_grad64),
    case("softmax_grad", f32(0, 3), f32(0, 3), axis=1, ref=softmax_grad64),
    case("softmax_grad", f64(3, 0), f64(3, 0), axis=1, ref=softmax_grad64),
    case("cross_entropy_grad", f32(), f32(0, 5), i64(0, low=0, high=5), ref=cross_entropy_grad64),
    case("layer_norm_gamma_grad", f32(0, 4), f32(0, 4), eps=1e-5, ref=layer_norm_gamma_grad64),
    case("layer_norm_gamma_grad", f64(3, 0), f64(3, 0), eps=1e-5, ref=layer_norm_gamma_grad64),
    case("cross_entropy", f32(0, 5), i64(0, low=0, high=5), ref=cross_entropy64),
    case("cross_entropy", f64(2, 0, 3), i64(2, 0, low=0, high=3), ref=cross_entropy64),
    case("concat", f32(0, 3), f32(2, 3), axis=0, ref=concat64),
    case("concat", f64(2, 0), f64(2, 3), f64(2, 0), axis=1, ref=concat64),
    case("concat", f32(0, 2), f32(0, 1), axis=1, ref=concat64),
    case("fused_elementwise", f32(0, 3), f32(3), program=(("mul", (0, 1)), ("tanh", (2,)), ("add", (3, 0))),
         ref=lambda x, b, program: np.tanh(x * b) + x),
    case("fused_elementwise", f64(1, 3), f64(0, 1), program=(("sub", (0, 1)), ("exp", (2,))),
         ref=lambda a, b, program: np.exp(a - b)),
]
CASES += ZERO_SIZE_CASES


def expected_dtype(row: Case, arrays) -> str:
    if row.result_dtype is not None:
        return row.result_dtype
    if "dtype" in row.attrs:
        return row.attrs["dtype"]
    return arrays[0].dtype.name


def test_every_op_has_a_row():
    missing = sorted(set(OPS) - {row.op for row in CASES})
    assert not missing, f"ops with no row in the op table (add one to CASES): {missing}"
    unknown = sorted({row.op for row in CASES} - set(OPS))
    assert not unknown, f"rows for ops that are not registered: {unknown}"


def prepared(row: Case):
    """The row's op, its seeded input arrays and its checked attributes."""
    op = OPS[row.op]
    return op, [make(x, np.random.default_rng(seed)) for seed, x in enumerate(row.inputs)], op.check_attrs(row.attrs)


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_op_against_numpy_reference(row: Case):
    op, arrays, attrs = prepared(row)

    result = op.evaluate(arrays, attrs)
    assert op.infer_type([TensorType.of(x) for x in arrays], attrs) == TensorType.of(result)
    assert result.dtype.name == expected_dtype(row, arrays)

    expected = np.asarray(row.reference(*[widen(x) for x in arrays], **attrs))
    assert result.shape == expected.shape
    if result.dtype.kind == "f":
        tolerance = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12)}[result.dtype.name]
        np.testing.assert_allclose(result, expected, rtol=tolerance[0], atol=tolerance[1])
    else:
        np.testing.assert_array_equal(result, expected)

    # The executor's path, into a dirty planned buffer, gives the very same bits.
    out = np.full(result.shape, 7, result.dtype)
    op.evaluate_into(out, arrays, attrs)
    np.testing.assert_array_equal(out, result)


ROWS_WITH_INPUTS = [row for row in CASES if row.inputs]  # constant takes none: nothing to feed eager or compiled


@pytest.mark.parametrize("row", ROWS_WITH_INPUTS, ids=[row.id for row in ROWS_WITH_INPUTS])
def test_eager_and_compiled_run_the_op_alike(row: Case):
    """Eager Tensors and the compiled executor (unoptimised) run the op's own kernel: the same bits."""
    op, arrays, attrs = prepared(row)
    expected = op.evaluate(arrays, attrs)

    def function(*tensors):
        return tensors[0]._apply(row.op, tensors, attrs)

    np.testing.assert_array_equal(function(*[graphgpt.Tensor(x, dtype=x.dtype) for x in arrays]).data, expected)
    np.testing.assert_array_equal(graphgpt.compile(function, *arrays, passes=[]).run(*arrays), expected)


ZERO_SIZE_ROWS = [row for row in ZERO_SIZE_CASES if row.inputs]


def weighted_objective(row: Case, attrs: dict, result: np.ndarray):
    """sum(op(inputs) * w) for fixed weights w of the result's shape, or None when the op has no gradient
    to check (a backward kernel, or a result that carries none)."""
    if OPS[row.op].vjp is None or result.dtype.kind != "f":
        return None
    weights = np.cos(np.arange(result.size)).reshape(result.shape).astype(result.dtype)
    return lambda *tensors: (tensors[0]._apply(row.op, tensors, attrs) * weights).sum()


@pytest.mark.parametrize("row", ZERO_SIZE_ROWS, ids=[row.id for row in ZERO_SIZE_ROWS])
def test_zero_size_rows_forward_and_backward_on_every_path(row: Case):
    """Eager, compiled as traced and compiled with the default passes run each zero-size row to the kernel's
    result bit for bit, and with every fast-math rewrite (a batched matmul flattened) to the same values; for a
    differentiable op the gradients of sum(op(...) * w) agree across the paths likewise, with the inputs'
    shapes and dtypes."""
    op, arrays, attrs = prepared(row)
    expected = op.evaluate(arrays, attrs)

    def function(*tensors):
        return tensors[0]._apply(row.op, tensors, attrs)

    assert same_bits(function(*[graphgpt.Tensor(x, dtype=x.dtype) for x in arrays]).data, expected)
    assert same_bits(graphgpt.compile(function, *arrays, passes=[]).run(*arrays), expected)
    assert same_bits(graphgpt.compile(function, *arrays).run(*arrays), expected)
    assert_agree(graphgpt.compile(function, *arrays, fast_math=True).run(*arrays), expected, "fast math")

    objective = weighted_objective(row, attrs, expected)
    if objective is None or not any(x.dtype.kind == "f" for x in arrays):
        return
    eager = eager_value_and_gradients(objective, arrays)
    traced = compiled_value_and_gradients(objective, arrays, passes=[])
    optimised = compiled_value_and_gradients(objective, arrays)
    fast = compiled_value_and_gradients(objective, arrays, fast_math=True)
    assert same_bits(eager[0], traced[0]) and same_bits(eager[0], optimised[0])
    float_arrays = [x for x in arrays if x.dtype.kind == "f"]
    for position, gradient in enumerate(eager[1]):
        assert gradient.shape == float_arrays[position].shape and gradient.dtype == float_arrays[position].dtype
        assert same_bits(gradient, traced[1][position]), f"gradient {position}: eager and compiled differ"
        assert same_bits(gradient, optimised[1][position]), f"gradient {position}: the default passes differ"
        assert_agree(fast[1][position], gradient, f"gradient {position}, fast math")


@pytest.mark.parametrize("row", ZERO_SIZE_ROWS, ids=[row.id for row in ZERO_SIZE_ROWS])
def test_zero_size_rows_match_torch(row: Case):
    """The zero-size rows' results and gradients are torch's (NaN for a mean over nothing)."""
    pytest.importorskip("torch")
    op, arrays, attrs = prepared(row)
    expected = op.evaluate(arrays, attrs)
    from torch_reference import run_in_torch

    graph = graphgpt.trace(lambda *tensors: tensors[0]._apply(row.op, tensors, attrs), *arrays).graph
    (torch_result,), _ = run_in_torch(graph, arrays)
    assert_agree(expected, torch_result, "result against torch", rtol=1e-5)
    objective = weighted_objective(row, attrs, expected)
    if objective is None or not any(x.dtype.kind == "f" for x in arrays):
        return
    value, gradients = eager_value_and_gradients(objective, arrays)
    torch_value, torch_gradients = torch_value_and_gradients(objective, arrays)
    assert_agree(value, torch_value, "value against torch", rtol=1e-5)
    for position, (gradient, expected_gradient) in enumerate(zip(gradients, torch_gradients)):
        assert_agree(gradient, expected_gradient, f"gradient {position} against torch", rtol=1e-5)
