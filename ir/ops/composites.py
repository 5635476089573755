"""Composite ops of the GPT: softmax, log_softmax, layer_norm and cross_entropy, each one node with a
numerically stable NumPy implementation (a decomposition into primitives can be a pass); and dropout_mask, the
seeded random mask of Dropout."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..types import INTEGER_DTYPES, TensorType
from . import attrs as A
from .blockwise import RowBlocking
from .reductions import sum_along
from .registry import OpKind, define_op
from .rules import check_axis, require_float, same_dtype


def _infer_along_axis(x: TensorType, axis: int) -> TensorType:
    require_float(x)
    check_axis(x, axis)
    return x


def _row_max(x: np.ndarray, axis: int) -> np.ndarray:
    """The max along `axis`, with 0 for a row that is entirely -inf (a fully masked attention row), so that
    x - max stays -inf there rather than -inf - (-inf) = NaN."""
    peak = np.maximum.reduce(x, axis=axis, keepdims=True)  # np.max's own call, without its Python wrapper
    np.copyto(peak, 0, where=np.isneginf(peak))  # in place: a third of np.where's cost on a decode step's rows
    return peak


def _softmax_into(out: np.ndarray, x: np.ndarray, axis: int) -> None:
    """Softmax along `axis`; a fully masked row (all -inf) has no distribution and comes out as zeros."""
    if out.size == 0:  # the type rule accepts an empty axis, where np.max would raise on a zero-size reduction
        return
    np.subtract(x, _row_max(x, axis), out=out)
    np.exp(out, out=out)
    total = sum_along(out, axis)
    np.copyto(total, 1, where=total == 0)
    out /= total


def _log_softmax_into(out: np.ndarray, x: np.ndarray, axis: int) -> None:
    if out.size == 0:  # an empty axis, which the type rule accepts: np.max would raise and log(0) warn
        return
    np.subtract(x, _row_max(x, axis), out=out)
    total = sum_along(np.exp(out), axis)
    # A fully masked row: log of softmax's zeros is -inf throughout (log(0) subtracted would make -inf - -inf).
    out -= np.log(np.where(total == 0, 1.0, total)).astype(x.dtype, copy=False)


define_op("softmax", kind=OpKind.OPAQUE, arity=1, attrs={"axis": A.INT}, infer=_infer_along_axis,
          compute_into=_softmax_into, cost=lambda out, x, axis: 5 * x.size,  # max, sub, exp, sum, div
          vjp=lambda g, out, x, axis: (lambda: g.softmax_grad(out, axis),),
          doc="softmax along one axis, max-shifted for stability")
define_op("log_softmax", kind=OpKind.OPAQUE, arity=1, attrs={"axis": A.INT}, infer=_infer_along_axis,
          compute_into=_log_softmax_into, cost=lambda out, x, axis: 5 * x.size,
          vjp=lambda g, out, x, axis: (lambda: g - out.exp() * g.sum(axis, keepdims=True),),
          doc="log of softmax along one axis, computed without overflow")


def _infer_layer_norm(x: TensorType, gamma: TensorType, beta: TensorType, eps: float) -> TensorType:
    require_float(x)
    same_dtype(x, gamma, beta)
    if x.rank < 1 or gamma.shape != x.shape[-1:] or beta.shape != x.shape[-1:]:
        raise ShapeError(f"gamma and beta must have the shape of the last axis of {x}, got {gamma} and {beta}")
    if not eps > 0:
        raise ShapeError(f"eps must be positive, got {eps}")
    return x


def normalize_rows(out: np.ndarray, x: np.ndarray, eps: float, scratch: np.ndarray) -> np.ndarray:
    """out = (x - mean) / sqrt(biased variance + eps) along the last axis; returns 1 / that root per row."""
    last, width = x.ndim - 1, x.shape[-1]
    np.subtract(x, sum_along(x, last) / width, out=out)
    np.square(out, out=scratch)
    inverse_std = sum_along(scratch, last)  # a new (rows, 1) array, finished in place: no temporaries
    inverse_std /= width
    inverse_std += eps
    np.sqrt(inverse_std, out=inverse_std)
    np.reciprocal(inverse_std, out=inverse_std)
    out *= inverse_std
    return inverse_std


def _layer_norm_block(out, x, gamma, beta, eps, scratch) -> None:
    normalize_rows(out, x, eps, scratch)
    out *= gamma
    out += beta


# Whole rows (each block normalises its rows), one scratch array: the squared deviations.
LAYER_NORM_BLOCKS = RowBlocking("layer_norm", scratch_arrays=1, whole_rows=True)


def _layer_norm_into(out: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> None:
    """(x - mean) / sqrt(biased variance + eps) * gamma + beta over the last axis, in blocks of rows."""
    LAYER_NORM_BLOCKS.run(_layer_norm_block, out, (x,), shared=(gamma, beta, eps))


def _layer_norm_vjp(g, out, x, gamma, beta, eps):
    return (lambda: g.layer_norm_grad(x, gamma, eps), lambda: g.layer_norm_gamma_grad(x, eps),
            lambda: g.sum_to(beta.shape))


define_op("layer_norm", kind=OpKind.OPAQUE, arity=3, attrs={"eps": A.FLOAT}, infer=_infer_layer_norm,
          compute_into=_layer_norm_into, vjp=_layer_norm_vjp, scratch=LAYER_NORM_BLOCKS.scratch_bytes,
          cost=lambda out, x, gamma, beta, eps: 8 * x.size,  # mean, centre, square, mean, sqrt+div, scale, shift
          doc="layer_norm(x, gamma, beta) over the last axis, biased variance")


def _infer_cross_entropy(logits: TensorType, targets: TensorType) -> TensorType:
    require_float(logits)
    if targets.dtype not in INTEGER_DTYPES:
        raise ShapeError(f"targets must be integer class indices, got {targets}")
    if logits.rank < 1 or targets.shape != logits.shape[:-1]:
        raise ShapeError(f"targets must have the shape of logits without its class axis: logits {logits} "
                         f"needs targets of shape {list(logits.shape[:-1])}, got {targets}")
    return TensorType((), logits.dtype)


def check_targets(targets: np.ndarray, classes: int) -> None:
    """Raise IndexError unless every target is a class index in 0..classes - 1."""
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        raise IndexError(f"cross_entropy target out of range: targets must lie in 0..{classes - 1}, "
                         f"got values from {int(targets.min())} to {int(targets.max())}")


def _cross_entropy_into(out: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
    """Mean over every position of -log softmax(logits)[target]."""
    check_targets(targets, logits.shape[-1])
    if targets.size == 0:
        out[...] = np.nan  # the mean over no positions, as torch gives it (np.mean would warn twice)
        return
    log_probs = np.empty_like(logits)
    _log_softmax_into(log_probs, logits, axis=-1)
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)
    out[...] = -np.mean(picked, dtype=logits.dtype)


def _cross_entropy_vjp(g, out, logits, targets):
    return (lambda: g.cross_entropy_grad(logits, targets), None)


define_op("cross_entropy", kind=OpKind.OPAQUE, arity=2, infer=_infer_cross_entropy,
          compute_into=_cross_entropy_into, vjp=_cross_entropy_vjp, cost=lambda out, logits, targets: 5 * logits.size,
          doc="cross_entropy(logits, targets): mean negative log-likelihood over all positions")


def _infer_dropout_mask(key: TensorType, shape, p: float, dtype: str) -> TensorType:
    if key.shape != () or key.dtype != "int64":
        raise ShapeError(f"the key must be an int64 scalar, got {key}")
    if not 0.0 <= p < 1.0:
        raise ShapeError(f"p must be at least 0 and below 1, got {p}")
    result = TensorType(shape, dtype)
    require_float(result)
    return result


def _dropout_mask(key: np.ndarray, shape, p: float, dtype: str) -> np.ndarray:
    """0 where an element is dropped (probability p), 1 / (1 - p) where it is kept, drawn from
    np.random.default_rng(key): the same key and shape give the same mask, eagerly and in any compiled run."""
    keep = np.random.default_rng(int(key)).random(shape) >= p
    return np.where(keep, 1.0 / (1.0 - p), 0.0).astype(dtype)


define_op("dropout_mask", kind=OpKind.OPAQUE, arity=1, attrs={"shape": A.SHAPE, "p": A.FLOAT, "dtype": A.DTYPE},
          infer=_infer_dropout_mask, compute=_dropout_mask, vjp=lambda g, out, key, shape, p, dtype: (None,),
          cost=lambda out, key, shape, p, dtype: 2 * out.size,  # draw, select
          doc="dropout_mask(key): 0 with probability p, else 1 / (1 - p), drawn from a generator seeded by key")
