"""Batched, broadcasting matrix multiplication: (..., n, k) @ (..., k, m) -> (..., n, m); and the same product
written out with its axes permuted (`matmul_permuted`, which passes/matmul_layout.py makes of a matmul read only
through a transpose, so that attention's heads are merged without a copy)."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import ShapeError
from ..scratch import scratch_arrays, scratch_nbytes
from ..types import TensorType
from . import attrs as A
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


def _matmul_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, op: str = "matmul") -> None:
    """out = a @ b. A batch of rows times one matrix ((B, T, k) @ (k, n), as in every Linear) is one GEMM over
    all B*T rows when `a` and `out` are C-contiguous (the reshapes are then views): ~12% faster here than NumPy's
    loop of one GEMM per batch entry. A batch of matrices times a batch stored transposed (attention's q @ k^T, k^T
    a view of k) first copies b into scratch in row order: NumPy's transposed GEMMs over such small matrices ran
    slower than the copy and the plain GEMMs together (8 x 4 heads of 64 x 16 @ 16 x 64: 87 against 67 us; the
    medium GPT's 8 x 8 of 128 x 32 @ 32 x 128: 1543 against 1318 us). OpenBLAS's plain and transposed kernels sum
    in different orders for some shapes (118 of 300 random ones differed in the last bits), so this rounds as the
    plain GEMM does. One kernel for eager and compiled runs, so both round alike. `op`: whose scratch it is
    (matmul_permuted's kernel is this one too)."""
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous and out.flags.c_contiguous:
        rows = math.prod(a.shape[:-1])  # explicit: reshape(-1, 0) of a zero-size array has no single answer
        np.matmul(a.reshape(rows, a.shape[-1]), b, out=out.reshape(rows, out.shape[-1]))
    elif b.ndim > 2 and _columns_first(b):
        [rows_first] = scratch_arrays(op, [b.shape], b.dtype)
        np.copyto(rows_first, b)
        np.matmul(a, rows_first, out=out)
    else:
        np.matmul(a, b, out=out)


def _columns_first(matrices: np.ndarray) -> bool:
    """Whether the last two axes of `matrices` are laid out column after column (a transposed view)."""
    return (matrices.size > 0 and matrices.shape[-1] > 1 and matrices.strides[-2] == matrices.itemsize
            and matrices.strides[-1] != matrices.itemsize)


def _matmul_scratch(out: TensorType, a: TensorType, b: TensorType) -> int:
    """A batch times a batch may copy b into scratch (_matmul_into): whether it does depends on b's layout at
    run time, so every such product declares room for it: exactly what it takes for a transposed b, unused for
    one in row order."""
    return scratch_nbytes([b.shape], b.dtype) if b.rank > 2 else 0


define_op("matmul", kind=OpKind.MATMUL, arity=2, infer=_infer_matmul, vjp=_matmul_vjp,
          compute_into=_matmul_into, scratch=_matmul_scratch,
          cost=lambda out, a, b: 2 * out.size * a.shape[-1],  # a multiply and an add per inner-product term
          doc="batched broadcasting matrix product")


def _infer_matmul_permuted(a: TensorType, b: TensorType, perm) -> TensorType:
    product = _infer_matmul(a, b)
    if sorted(perm) != list(range(product.rank)) or perm[-1] != product.rank - 1:
        raise ShapeError(f"perm {perm} is not a permutation of the {product.rank} axes of {a} @ {b} keeping the "
                         f"last axis last")
    return TensorType(tuple(product.shape[axis] for axis in perm), product.dtype)


@functools.lru_cache(maxsize=None)
def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation undoing `perm` (looked up once per perm: the kernel runs on every step)."""
    return tuple(int(axis) for axis in np.argsort(perm))


def _matmul_permuted_vjp(g, out, a, b, perm):
    return _matmul_vjp(g.permute(*_inverse(tuple(perm))), None, a, b)


def _matmul_permuted_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, perm) -> None:
    """transpose(a @ b, perm): the product computed into out seen with its axes put back, the rows of each matrix
    still running along out's last axis (so BLAS writes them in place: as fast as into a contiguous array, and the
    same GEMMs as matmul's over these operands, so the same bits)."""
    _matmul_into(np.transpose(out, _inverse(tuple(perm))), a, b, "matmul_permuted")


define_op("matmul_permuted", kind=OpKind.MATMUL, arity=2, attrs={"perm": A.INTS}, infer=_infer_matmul_permuted,
          vjp=_matmul_permuted_vjp, compute_into=_matmul_permuted_into,
          scratch=lambda out, a, b, perm: _matmul_scratch(out, a, b),
          cost=lambda out, a, b, perm: 2 * out.size * a.shape[-1],
          doc="transpose(a @ b, perm), perm keeping the last axis last: the product written in the layout read")
