"""Reductions over a set of axes, with or without keeping the reduced axes as size 1."""

from __future__ import annotations

import numpy as np

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


def _kept(reduced, x, axes, keepdims):
    """A reduced value (or its gradient) with the reduced axes present as size 1, ready to broadcast over x."""
    if keepdims:
        return reduced
    return reduced.reshape(tuple(1 if axis in axes else size for axis, size in enumerate(x.shape)))


def _sum_vjp(g, out, x, axes, keepdims):
    return (lambda: _kept(g, x, axes, keepdims).broadcast_to(x.shape),)


def _mean_vjp(g, out, x, axes, keepdims):
    count = int(np.prod([x.shape[axis] for axis in axes], dtype=np.int64))
    return (lambda: _kept(g, x, axes, keepdims).broadcast_to(x.shape) * (1.0 / count),)


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
define_op("mean", kind=OpKind.REDUCTION, arity=1, attrs=REDUCTION_ATTRS, infer=_infer_mean,
          compute=lambda x, axes, keepdims: np.mean(x, axis=axes, keepdims=keepdims, dtype=x.dtype),
          compute_into=lambda out, x, axes, keepdims: np.mean(x, axis=axes, keepdims=keepdims, dtype=x.dtype,
                                                              out=out),
          vjp=_mean_vjp, doc="mean over axes")
define_op("max", kind=OpKind.REDUCTION, arity=1, attrs=REDUCTION_ATTRS, infer=_infer_max,
          compute=lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims),
          compute_into=lambda out, x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims, out=out),
          vjp=_max_vjp, doc="maximum over axes")
