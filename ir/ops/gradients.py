"""Backward kernels: one op each for the gradient of GELU, of softmax, of cross entropy (with respect to the
logits) and of layer norm (with respect to x and to gamma), which the gradient rules emit in place of the four to
twenty primitive nodes the same algebra would take.

Each computes what the primitive chain computes, reorganised to stream over its operands fewer times and to hold
intermediates in at most two scratch arrays (PyTorch's GeluBackward and NativeLayerNormBackward are the same
idea). They are backward ops: they have no gradient rule of their own (no second derivatives).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..types import TensorType
from . import attrs as A
from .blockwise import RowBlocking
from .composites import _infer_cross_entropy, _softmax_into, check_targets, normalize_rows
from .elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI
from .reductions import ones_vector, sum_along
from .registry import OpKind, define_op
from .rules import check_axis, require_float, same_dtype


def _infer_same_as_x(g: TensorType, x: TensorType, *rest: TensorType, **attrs) -> TensorType:
    require_float(x)
    same_dtype(g, x, *rest)
    if g.shape != x.shape:
        raise ShapeError(f"the gradient {g} must have the shape of x {x}")
    return x


def _gelu_grad_block(out, g, x, square, e) -> None:
    """gelu x = x s(2u), s the sigmoid, u = c (x + k x^3), so d/dx gelu = s + 2 x u' s (1 - s), u' = c (1 + 3k x^2).
    With e = exp(-2u): s = 1 / (1 + e), and 1 - s = e s, computed so, not by subtraction, which cancels where s
    nears 1 (x = 5: the gradient's 1.6e-6 above 1 would be lost). e is capped at the dtype's largest value first:
    where it overflows s is 0, and 0 times the cap is the 0 that inf * 0 would make NaN. s (1 - s) multiplies in
    before x: where x^3 overflows (float32 past |x| ~ 7e12) it is 0, and inf * 0 would be NaN instead of torch's
    1 (x > 0) or 0 (x < 0). 16 passes, against 19 nodes for the primitive chain."""
    c, k = GELU_SQRT_2_OVER_PI, GELU_CUBIC
    np.multiply(x, x, out=square)
    np.multiply(square, -2.0 * c * k, out=e)  # the factors of 2 fold into the constants: scaling by 2 is exact
    e -= 2.0 * c
    e *= x  # -2u
    np.exp(e, out=e)
    np.add(e, 1.0, out=out)
    np.divide(1.0, out, out=out)  # s
    np.minimum(e, np.finfo(e.dtype).max, out=e)
    e *= out  # 1 - s
    e *= out  # s (1 - s)
    square *= 6.0 * c * k
    square += 2.0 * c  # 2u'
    square *= e
    square *= x
    out += square
    out *= g


# Flat runs of elements (elementwise), two scratch arrays: x^2 (then u' and the term it is in) and e.
GELU_GRAD_BLOCKS = RowBlocking("gelu_grad", scratch_arrays=2, whole_rows=False)


def _gelu_grad_into(out: np.ndarray, g: np.ndarray, x: np.ndarray) -> None:
    GELU_GRAD_BLOCKS.run(_gelu_grad_block, out, (g, x))


define_op("gelu_grad", kind=OpKind.ELEMENTWISE, arity=2, infer=_infer_same_as_x, compute_into=_gelu_grad_into,
          scratch=GELU_GRAD_BLOCKS.scratch_bytes, cost=lambda out, g, x: 16 * out.size,
          doc="gelu_grad(g, x): g times the derivative of gelu at x (the gradient of gelu)")


def _infer_layer_norm_grad(g: TensorType, x: TensorType, gamma: TensorType, eps: float) -> TensorType:
    if x.rank < 1 or gamma.shape != x.shape[-1:]:
        raise ShapeError(f"gamma must have the shape of the last axis of {x}, got {gamma}")
    return _infer_same_as_x(g, x, gamma)


def _layer_norm_grad_block(out, g, x, gamma, eps, scaled, scratch) -> None:
    """(g gamma - mean(g gamma) - x^ mean(g gamma x^)) / std over rows, with x^ recomputed from x."""
    last, width = x.ndim - 1, x.shape[-1]
    inverse_std = normalize_rows(out, x, eps, scratch)  # out = x^
    np.multiply(g, gamma, out=scaled)
    np.multiply(scaled, out, out=scratch)
    out *= sum_along(scratch, last) / width
    np.subtract(scaled, out, out=out)
    out -= sum_along(scaled, last) / width
    out *= inverse_std


# Whole rows (row means), two scratch arrays: g gamma, and the products summed along rows.
LAYER_NORM_GRAD_BLOCKS = RowBlocking("layer_norm_grad", scratch_arrays=2, whole_rows=True)


def _layer_norm_grad_into(out: np.ndarray, g: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float) -> None:
    """d loss / d x of layer_norm(x, gamma, beta), given g = d loss / d output."""
    LAYER_NORM_GRAD_BLOCKS.run(_layer_norm_grad_block, out, (g, x), shared=(gamma, eps))


define_op("layer_norm_grad", kind=OpKind.OPAQUE, arity=3, attrs={"eps": A.FLOAT}, infer=_infer_layer_norm_grad,
          compute_into=_layer_norm_grad_into, scratch=LAYER_NORM_GRAD_BLOCKS.scratch_bytes,
          cost=lambda out, g, x, gamma, eps: 10 * x.size,
          doc="layer_norm_grad(g, x, gamma): the gradient of layer_norm with respect to x")


def _infer_layer_norm_gamma_grad(g: TensorType, x: TensorType, eps: float) -> TensorType:
    _infer_same_as_x(g, x)
    if x.rank < 1:
        raise ShapeError(f"layer norm normalises the last axis; x {x} has none")
    return TensorType(x.shape[-1:], x.dtype)


# Whole rows (x^ per row), two scratch arrays: x^ times g, and the squared deviations.
LAYER_NORM_GAMMA_GRAD_BLOCKS = RowBlocking("layer_norm_gamma_grad", scratch_arrays=2, whole_rows=True)


def _layer_norm_gamma_grad_into(out: np.ndarray, g: np.ndarray, x: np.ndarray, eps: float) -> None:
    """sum over rows of g * x^, x^ recomputed from x block by block (never a whole normalised copy of x)."""
    out.fill(0)
    for g_rows, x_rows, normalized, scratch in LAYER_NORM_GAMMA_GRAD_BLOCKS.blocks((g, x)):
        normalize_rows(normalized, x_rows, eps, scratch)
        normalized *= g_rows
        out += np.matmul(ones_vector(normalized.shape[0], normalized.dtype), normalized)  # column sums


define_op("layer_norm_gamma_grad", kind=OpKind.OPAQUE, arity=2, attrs={"eps": A.FLOAT},
          infer=_infer_layer_norm_gamma_grad, compute_into=_layer_norm_gamma_grad_into,
          scratch=LAYER_NORM_GAMMA_GRAD_BLOCKS.scratch_bytes, cost=lambda out, g, x, eps: 7 * x.size,
          doc="layer_norm_gamma_grad(g, x): the gradient of layer_norm with respect to gamma")


def _infer_softmax_grad(g: TensorType, y: TensorType, axis: int) -> TensorType:
    _infer_same_as_x(g, y)
    check_axis(y, axis)
    return y


def _softmax_grad_into(out: np.ndarray, g: np.ndarray, y: np.ndarray, axis: int) -> None:
    """y (g - sum(g y)) along `axis`: the gradient of softmax, given its output y and the incoming gradient g."""
    if out.size == 0:
        return
    np.multiply(g, y, out=out)
    total = sum_along(out, axis)  # rows just written, in cache: see reductions.py
    np.subtract(g, total, out=out)
    out *= y


define_op("softmax_grad", kind=OpKind.OPAQUE, arity=2, attrs={"axis": A.INT}, infer=_infer_softmax_grad,
          compute_into=_softmax_grad_into, cost=lambda out, g, y, axis: 4 * y.size,  # product, sum, sub, mul
          doc="softmax_grad(g, y): the gradient of softmax along one axis, y its output")


def _infer_cross_entropy_grad(g: TensorType, logits: TensorType, targets: TensorType) -> TensorType:
    _infer_cross_entropy(logits, targets)
    if g.shape != () or g.dtype != logits.dtype:
        raise ShapeError(f"the gradient of the loss must be a scalar of the logits' dtype {logits.dtype}, got {g}")
    return logits


def _cross_entropy_grad_into(out: np.ndarray, g: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
    """(softmax(logits) - onehot(targets)) g / positions: exact and stable, with no log or division by a
    probability. The scale is g times 1 / positions rounded to the dtype, as the mean's gradient makes it."""
    check_targets(targets, logits.shape[-1])
    if out.size == 0:
        return
    _softmax_into(out, logits, logits.ndim - 1)
    picked = np.take_along_axis(out, targets[..., None], axis=-1)
    picked -= 1
    np.put_along_axis(out, targets[..., None], picked, axis=-1)
    out *= g * out.dtype.type(1.0 / targets.size)


define_op("cross_entropy_grad", kind=OpKind.OPAQUE, arity=3, infer=_infer_cross_entropy_grad,
          compute_into=_cross_entropy_grad_into,
          cost=lambda out, g, logits, targets: 6 * logits.size,  # softmax's five, the scale
          doc="cross_entropy_grad(g, logits, targets): the gradient of cross_entropy with respect to the logits")
