"""Fused scaled dot-product attention: softmax(q @ k^T * scale + mask) @ v as one op, and its gradient as one op,
both computed a block of query rows at a time so the (T, S) scores of the whole batch never reach memory, only
one block's (in scratch) -- as FlashAttention and inductor's CPU attention kernel do.

    out = attention(q, k, v, mask, scale)      # q (..., T, d), k (..., S, d), v (..., S, dv), mask (..., T, S)
    grads = attention_grad(q, k, v, mask, out, dout, scale)   # (3, ..., T, d): dq, dk, dv packed (S == T, dv == d)

The composite (matmul, transpose, mul, add, softmax, matmul) stays what models trace and what is studied; the
pass passes/attention_fusion.py replaces it by this op when the fast-math flag `reassociate` allows, because the
backward sums dk and dv block by block (and BLAS may round a block's GEMM unlike the whole one's): the results
agree with the composite's within float32 rounding of a reordered sum (tests/test_attention_fusion.py states the
bound). `mask` is additive (0 / -inf, or any finite bias) and broadcasts against the scores; a query row with
every key masked gives zeros, as the composite's softmax does.

The backward recomputes each block's probabilities from q and k rather than keeping them: the (T, S) weights are
the largest activation of a GPT's attention (B * H * T * S floats per layer), and keeping them is what the fused
op exists to avoid.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ..errors import ShapeError
from ..scratch import scratch_arrays, scratch_nbytes
from ..types import TensorType
from . import attrs as A
from . import blockwise
from .composites import _softmax_into
from .registry import OpKind, define_op
from .rules import broadcast_shapes, require_float, same_dtype


def _check_operands(q: TensorType, k: TensorType, v: TensorType, mask: TensorType) -> None:
    require_float(q)
    same_dtype(q, k, v, mask)
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ShapeError(f"q, k and v must be (..., T, d), (..., S, d), (..., S, dv) of one rank (at least 2), got "
                         f"{q}, {k}, {v}")
    if k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2]:
        raise ShapeError(f"q, k and v must share their leading (batch, head) axes, got {q}, {k}, {v}")
    if k.shape[-1] != q.shape[-1] or v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"k must be (..., S, {q.shape[-1]}) and v (..., S, dv) with the keys' S, got {k}, {v}")
    scores = q.shape[:-1] + (k.shape[-2],)
    try:
        fits = mask.rank <= len(scores) and broadcast_shapes(scores, mask.shape) == scores
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"the mask {mask} must broadcast against the scores {list(scores)}")


def _infer_attention(q, k, v, mask, scale: float) -> TensorType:
    _check_operands(q, k, v, mask)
    return TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)


def _infer_attention_grad(q, k, v, mask, out, dout, scale: float) -> TensorType:
    _check_operands(q, k, v, mask)
    if k.shape != q.shape or v.shape != q.shape:
        raise ShapeError(f"attention_grad packs dq, dk and dv into one array: k and v must have q's shape {q}, got "
                         f"{k} and {v}")
    if out != q or dout != q:
        raise ShapeError(f"out and dout must have q's type {q}, got {out} and {dout}")
    return TensorType((3,) + q.shape, q.dtype)


def _block_rows(q_shape: tuple, keys: int) -> int:
    """Query rows per block: the block's scores of every batch and head fill at most blockwise.BLOCK_ELEMENTS
    (read at each call: tests vary it)."""
    slabs = math.prod(q_shape[:-2])
    return max(1, min(q_shape[-2], blockwise.BLOCK_ELEMENTS // max(slabs * keys, 1)))


def _blocks(q_shape: tuple, keys: int) -> Iterator[tuple[int, int]]:
    rows = _block_rows(q_shape, keys)
    for start in range(0, q_shape[-2], rows):
        yield start, min(start + rows, q_shape[-2])


def _mask_rows(mask: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The mask's rows for query rows start:stop (all of them where it broadcasts along the query axis)."""
    if mask.ndim >= 2 and mask.shape[-2] != 1:
        return mask[..., start:stop, :]
    return mask


def _probabilities(scores: np.ndarray, q_rows, k_t, mask_rows, scale) -> np.ndarray:
    """softmax(q_rows @ k^T * scale + mask_rows) into `scores`, as the composite computes it, op by op."""
    np.matmul(q_rows, k_t, out=scores)
    scores *= scale
    scores += mask_rows
    _softmax_into(scores, scores, scores.ndim - 1)
    return scores


def _scores_shape(q: TensorType | np.ndarray, rows: int, keys: int) -> tuple:
    return tuple(q.shape[:-2]) + (rows, keys)


def _attention_into(out, q, k, v, mask, scale) -> None:
    keys = k.shape[-2]
    scale = q.dtype.type(scale)
    rows = _block_rows(q.shape, keys)
    [scores] = scratch_arrays("attention", [_scores_shape(q, rows, keys)], q.dtype)
    k_t = np.swapaxes(k, -1, -2)
    for start, stop in _blocks(q.shape, keys):
        probabilities = _probabilities(scores[..., :stop - start, :], q[..., start:stop, :], k_t,
                                       _mask_rows(mask, start, stop), scale)
        np.matmul(probabilities, v, out=out[..., start:stop, :])


def _attention_scratch(out, q, k, v, mask, scale) -> int:
    rows = _block_rows(q.shape, k.shape[-2])
    return scratch_nbytes([_scores_shape(q, rows, k.shape[-2])], q.numpy_dtype)


def _attention_grad_into(grads, q, k, v, mask, out, dout, scale) -> None:
    """dq, dk, dv into grads[0], grads[1], grads[2], a block of query rows at a time: P from q and k again,
    dv += P^T dout, dS = P * (dout v^T - rowsum(dout * out)) * scale, dq = dS k, dk += dS^T q."""
    keys = k.shape[-2]
    scale = q.dtype.type(scale)
    rows = _block_rows(q.shape, keys)
    scores, d_scores, part, row_dot = scratch_arrays(
        "attention_grad", [_scores_shape(q, rows, keys)] * 2 + [k.shape, q.shape[:-1] + (1,)], q.dtype)
    np.sum(np.multiply(dout, out, out=grads[0]), axis=-1, keepdims=True, out=row_dot)  # grads[0]: free for now
    dq, dk, dv = grads
    dk.fill(0)
    dv.fill(0)
    k_t, v_t = np.swapaxes(k, -1, -2), np.swapaxes(v, -1, -2)
    for start, stop in _blocks(q.shape, keys):
        count = stop - start
        q_rows, dout_rows = q[..., start:stop, :], dout[..., start:stop, :]
        probabilities = _probabilities(scores[..., :count, :], q_rows, k_t, _mask_rows(mask, start, stop), scale)
        np.matmul(np.swapaxes(probabilities, -1, -2), dout_rows, out=part)
        dv += part
        block = d_scores[..., :count, :]
        np.matmul(dout_rows, v_t, out=block)
        block -= row_dot[..., start:stop, :]
        block *= probabilities
        block *= scale
        np.matmul(block, k, out=dq[..., start:stop, :])
        np.matmul(np.swapaxes(block, -1, -2), q_rows, out=part)
        dk += part


def _attention_grad_scratch(out, q, k, v, mask, attention_out, dout, scale) -> int:
    rows = _block_rows(q.shape, k.shape[-2])
    scores = _scores_shape(q, rows, k.shape[-2])
    return scratch_nbytes([scores, scores, k.shape, q.shape[:-1] + (1,)], q.numpy_dtype)


def _attention_vjp(g, out, q, k, v, mask, scale):
    packed, composite = [], {}  # each made once, when the first gradient needing it is asked for

    def fused(index: int):
        def make():
            if not packed:
                packed.append(q.attention_grad(k, v, mask, out, g, scale))
            return packed[0][index]
        return make

    def weights_and_d_scores():
        # The composite's weights and the gradient of the (pre-softmax) scores, the whole (T, S) of them: for a
        # mask the loss depends on (a learned bias; a constant mask never asks) and for k, v of another length
        # than q (attention_grad packs three arrays of q's shape).
        if not composite:
            weights = ((q @ k.transpose()) * scale + mask).softmax(-1)
            composite["weights"] = weights
            composite["d_scores"] = weights * (g @ v.transpose() - (g * out).sum(-1, keepdims=True))
        return composite["weights"], composite["d_scores"]

    def unfused(index: int):
        def make():
            weights, d_scores = weights_and_d_scores()
            if index == 0:
                return (d_scores @ k) * scale
            if index == 1:
                return (d_scores.transpose() @ q) * scale
            return weights.transpose() @ g
        return make

    def gradient_mask():
        return weights_and_d_scores()[1].sum_to(mask.shape)

    gradient = fused if k.shape == q.shape and v.shape == q.shape else unfused
    return (gradient(0), gradient(1), gradient(2), gradient_mask)


def _attention_cost(out, q, k, v, mask, scale) -> int:
    scores = math.prod(q.shape[:-1]) * k.shape[-2]
    return 2 * scores * q.shape[-1] + 2 * scores * v.shape[-1] + 7 * scores  # two GEMMs, scale, mask, softmax


define_op("attention", kind=OpKind.OPAQUE, arity=4, attrs={"scale": A.FLOAT}, infer=_infer_attention,
          compute_into=_attention_into, vjp=_attention_vjp, scratch=_attention_scratch, cost=_attention_cost,
          doc="attention(q, k, v, mask): softmax(q @ k^T * scale + mask) @ v, in blocks of query rows")
def _attention_grad_cost(grads, q, k, v, mask, out, dout, scale) -> int:
    scores = math.prod(q.shape[:-1]) * k.shape[-2]
    return 5 * 2 * scores * q.shape[-1] + 11 * scores  # five GEMMs; the weights again, then dS


define_op("attention_grad", kind=OpKind.OPAQUE, arity=6, attrs={"scale": A.FLOAT}, infer=_infer_attention_grad,
          compute_into=_attention_grad_into, scratch=_attention_grad_scratch, cost=_attention_grad_cost,
          doc="attention_grad(q, k, v, mask, out, dout): dq, dk, dv of attention packed as (3, ...), recomputing "
              "the weights block by block")
