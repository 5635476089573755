"""Reductions over a set of axes, with or without keeping the reduced axes as size 1."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..dims import Size
from ..errors import ShapeError
from ..types import TensorType
from . import attrs as A
from .registry import OpKind, define_op
from .rules import reduced_shape, require_float

REDUCTION_ATTRS = {"axes": A.INTS, "keepdims": A.BOOL}


def _infer_sum(x: TensorType, axes, keepdims) -> TensorType:
    if x.dtype == "bool":
        raise ShapeError(f"cannot sum a bool input {x}; cast it first")
    return TensorType(reduced_shape(x, axes, keepdims), x.dtype)


def _infer_mean(x: TensorType, axes, keepdims) -> TensorType:
    require_float(x)
    return TensorType(reduced_shape(x, axes, keepdims), x.dtype)


def _infer_max(x: TensorType, axes, keepdims) -> TensorType:
    # Axes checked first: indexing x.shape with an out-of-range axis raised IndexError instead of ShapeError.
    shape = reduced_shape(x, axes, keepdims)
    if any(x.shape[axis] == 0 for axis in axes):
        raise ShapeError(f"max over an empty axis of {x} has no value")
    return TensorType(shape, x.dtype)


# Kernels that normalise along an axis (softmax, layer norm and its gradient) sum rows they have just written, so
# the rows are in cache: there a matrix-vector product with a vector of ones runs 2-4x faster than np.sum's
# reduction loop (benchmarks/kernels.py). On rows fresh from memory it is ~2x slower, so the sum and mean ops,
# whose inputs may come from anywhere, keep np.sum. Rows longer than this keep np.sum too: its pairwise
# summation's rounding error grows with log(n), a GEMV's with n.
GEMV_MAX_LENGTH = 4096


@functools.lru_cache(maxsize=64)
def ones_vector(length: int, dtype: np.dtype) -> np.ndarray:
    ones = np.ones(length, dtype)
    ones.flags.writeable = False
    return ones


def sum_along(x: np.ndarray, axis: int) -> np.ndarray:
    """x summed over one axis, kept as size 1 (for kernels that normalise along it)."""
    axis %= x.ndim
    length = x.shape[axis]
    if (axis == x.ndim - 1 and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
            and 0 < length <= GEMV_MAX_LENGTH and x.size > 0):
        return np.matmul(x.reshape(-1, length), ones_vector(length, x.dtype)).reshape(x.shape[:-1] + (1,))
    return np.sum(x, axis=axis, keepdims=True, dtype=x.dtype)


def _kept(reduced, x, axes, keepdims):
    """A reduced value (or its gradient) with the reduced axes present as size 1, ready to broadcast over x."""
    if keepdims:
        return reduced
    return reduced.reshape(tuple(1 if axis in axes else size for axis, size in enumerate(x.shape)))


def _sum_vjp(g, out, x, axes, keepdims):
    return (lambda: _kept(g, x, axes, keepdims).broadcast_to(x.shape),)


def _reduced_count(x, axes) -> Size:
    """How many elements of x each result element of a reduction over `axes` averages (symbolic for B or T)."""
    return math.prod(x.shape[axis] for axis in axes)


def _mean_vjp(g, out, x, axes, keepdims):
    # An empty reduced axis leaves x with no elements, so its gradient is empty whatever the scale: 1 keeps the
    # scale finite there (1 / 0 would raise). A symbolic count is at least 1 already.
    count = max(_reduced_count(x, axes), 1)
    return (lambda: _kept(g, x, axes, keepdims).broadcast_to(x.shape) * g.reciprocal_of(count),)


def _max_vjp(g, out, x, axes, keepdims):
    def gradient():
        # Ties share the gradient equally (the maximum's subgradient that keeps the sum right).
        winners = x.equal(_kept(out, x, axes, keepdims)).astype(x.dtype)
        return winners * (_kept(g, x, axes, keepdims) / winners.sum(axes, keepdims=True))
    return (gradient,)


# dtype=x.dtype: NumPy sums int32 into int64 by default, which would break the declared type.
define_op("sum", kind=OpKind.REDUCTION, arity=1, attrs=REDUCTION_ATTRS, infer=_infer_sum,
          compute=lambda x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype),
          compute_into=lambda out, x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype,
                                                             out=out),
          vjp=_sum_vjp, doc="sum over axes")
def _mean_into(out: np.ndarray, x: np.ndarray, axes, keepdims) -> None:
    if _reduced_count(x, axes) == 0:
        # The mean of no elements is NaN (as in torch); np.mean would say so with two RuntimeWarnings.
        out.fill(np.nan)
        return
    np.mean(x, axis=axes, keepdims=keepdims, dtype=x.dtype, out=out)


define_op("mean", kind=OpKind.REDUCTION, arity=1, attrs=REDUCTION_ATTRS, infer=_infer_mean,
          compute_into=_mean_into, vjp=_mean_vjp, doc="mean over axes")
define_op("max", kind=OpKind.REDUCTION, arity=1, attrs=REDUCTION_ATTRS, infer=_infer_max,
          compute=lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims),
          compute_into=lambda out, x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims, out=out),
          vjp=_max_vjp, doc="maximum over axes")
