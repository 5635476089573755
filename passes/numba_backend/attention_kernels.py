"""Generated kernels for fused attention (ir/ops/attention.py): `attention`, softmax(q k^T scale + mask) v, and
`attention_grad`, its dq, dk, dv packed as (3, ...). Each works through one (batch, head) matrix at a time and,
within it, one query row at a time: that row's scores sit in a local buffer of length S (never the (T, S)
matrix), are scaled, masked and softmaxed there, and give the row's output (or, backward, its gradients) while
they are in the L1 cache. The backward recomputes each row's weights, as the NumPy kernel does.

Loops: k and v of each (batch, head) are first copied transposed into contiguous scratch (the schedule passes
strided views: q, k and v are transposes of the qkv projection), so that every product runs along a contiguous
row of keys, which LLVM vectorises: the scores as d rows of k^T scaled and added (q_i . k_j for every j at once),
weights . v as dv dot products with the rows of v^T; backward, dk and dv are summed transposed, (d, S), and
written at the end. (Measured against dot products over d for the scores and rows of v scaled and added for
weights . v: these were as fast or faster at d = 16 and 32.)

Keys a row may not see, masked by -inf past its last visible one (a causal mask's, a padding mask's), are left
out of its loops: their weights are 0 and every term they bring is 0 exactly, as long as no operand element of
the (batch, head) is inf, NaN or so large that a sum of d or dv products of them could overflow, and the row's
mask holds no NaN or +inf (else NaN reaches every key of the row in NumPy, and so here: all keys are summed).
A causal mask so halves the work. Each row's keys are rounded up to a multiple of 16 (masked ones, weights 0):
its loops then have no scalar remainder (measured 20% faster).

What differs from the NumPy kernel: the order of each sum (the products', over d and over the keys, dk and dv
over the query rows, the softmax's total and row . out in vector lanes), the terms of masked keys left out (all
exactly 0) and, in float32, exp (source_text.exp_call). Every elementwise step (scale, mask, the softmax's shift
and division, dS's (dP - row . out) P scale) is the NumPy kernel's, in the same dtype and order. The mask
broadcasts as NumPy broadcasts it: which of its axes have length 1 is written into the source, sizes are read at
run time.

    print(attention_source(node, parallel=False).text)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from graphgpt.ir import Node, TensorType

from .elementwise_kernels import _broadcast_pattern
from .rowwise_kernels import row_peak, softmax_row
from .source_text import (KernelSource, body_indent, decorator, float32_helpers,
                          float_literal, module_text, reductions, row_loop, row_view)

# y += a x along a row: the products of the kernels are written with it. Inlined: LLVM left it a call in the
# inner loop.
ADD_SCALED = '''{decorator}
def add_scaled(y, a, x):
    for j in range(y.shape[0]):
        y[j] += a * x[j]'''

# Keys per row are rounded up to a multiple of this (see the module docstring).
KEY_STEP = 16


@dataclass(frozen=True)
class _MaskReading:
    """How a kernel reads the mask: lines per (batch, head) matrix (once, before the loop over them, when every
    matrix reads the same: `shared`), lines per query row `i`, and key {j}'s element as a format string."""

    per_head: list[str]
    per_row: list[str]
    element: str
    shared: bool


def _mask_reading(mask: TensorType, scores: Sequence[int], heads: Sequence[str]) -> _MaskReading:
    """The mask read as NumPy broadcasts it against the scores, its length-1 axes at index 0."""
    if not mask.shape:
        return _MaskReading(["mask_value = mask[()]"], [], "mask_value", True)
    rank, offset = len(scores), len(scores) - len(mask.shape)

    def index(axis: int, name: str) -> str:  # axis: the mask's, from the first
        return "0" if mask.shape[axis] == 1 and scores[axis + offset] != 1 else name

    leading = [index(axis, heads[axis + offset]) for axis in range(len(mask.shape)) if axis + offset < rank - 2]
    shared = all(name == "0" for name in leading)
    if len(mask.shape) < 2:  # no query axis
        per_head, per_row = ["mask_row = mask"], []
    else:
        per_head = [f"mask_head = {row_view('mask', leading)}"]
        per_row = [f"mask_row = mask_head[{index(len(mask.shape) - 2, 'i')}]"]
    if mask.shape[-1] == 1 and scores[-1] != 1:  # one element for the whole row
        return _MaskReading(per_head, per_row + ["mask_value = mask_row[0]"], "mask_value", shared)
    return _MaskReading(per_head, per_row, "mask_row[{j}]", shared)


def _extents(reading: _MaskReading) -> list[str]:
    """Lines setting extents[i] to the keys row i's loops cover: one past its last key not masked by -inf
    (rounded up to KEY_STEP), or all of them if its mask holds NaN or +inf."""
    element = reading.element
    return ["extents = np.empty(rows, np.int64)",
            "for i in range(rows):",
            *(f"    {line}" for line in reading.per_row),
            "    extent = keys",
            f"    while extent > 0 and {element.format(j='extent - 1')} == -np.inf:",
            "        extent -= 1",
            "    for j in range(extent):",
            f"        if not {element.format(j='j')} < np.inf:",
            "            extent = keys",
            f"    extents[i] = min(keys, (extent + {KEY_STEP - 1}) // {KEY_STEP} * {KEY_STEP})"]


def _transposed(target: str, source: str, rows: str, columns: str, counted: bool = False) -> list[str]:
    """Lines copying the (rows, columns) matrix `source` transposed into `target` (adding to `unbounded` its
    elements beyond `limit`, inf or NaN, if `counted`)."""
    lines = [f"for j in range({rows}):", f"    for c in range({columns}):", f"        {target}[c, j] = {source}[j, c]"]
    return lines + [f"        unbounded += not abs({source}[j, c]) <= limit"] if counted else lines


@dataclass(frozen=True)
class _Parts:
    """What one kernel adds to the common frame (_kernel): its signature, the views of its arrays per (batch,
    head) matrix, pairs (view, array); the views whose elements are counted into `unbounded` besides k's and v's,
    pairs (view, columns); scratch lines per matrix; the body of the query-row loop, from key {j}'s mask element;
    and lines written after that loop."""

    signature: str
    views: Sequence[tuple[str, str]]
    counted: Sequence[tuple[str, str]]
    scratch: Sequence[str]
    row: Callable[[str], list[str]]
    written: Sequence[str] = ()


def _kernel(node: Node, parallel: bool, parts: _Parts) -> list[str]:
    """The kernel function: sizes, the mask's extents, then per (batch, head) matrix its views, k^T and v^T,
    how many of its operand elements are unbounded, scratch, the loop over query rows (opening with the row's
    `extent` and `scores`, its weights over those keys) and what is written after it."""
    q, mask = node.inputs[0].type, node.inputs[3].type
    rank, dtype = len(q.shape), q.dtype
    loop, heads = row_loop(rank - 1, parallel and rank > 2, shape="q.shape[:-1]")  # width: q's rows
    indent = body_indent(rank - 1)
    reading = _mask_reading(mask, q.shape[:-1] + (node.inputs[1].type.shape[-2],), heads)
    mask_lines = reading.per_head + _extents(reading)
    counted = [line for view, columns in parts.counted
               for line in ["for j in range(rows):", f"    for c in range({columns}):",
                            f"        unbounded += not abs({view}[j, c]) <= limit"]]
    head = [*([] if reading.shared else mask_lines),
            f"keys_t = np.empty((depth, keys), np.{dtype})",
            f"values_t = np.empty((depth_v, keys), np.{dtype})",
            "unbounded = 0",
            *_transposed("keys_t", "k_head", "keys", "depth", counted=True),
            *_transposed("values_t", "v_head", "keys", "depth_v", counted=True),
            *counted,
            f"weights = np.empty(keys, np.{dtype})",
            *parts.scratch]
    row = [*reading.per_row,
           "extent = extents[i] if unbounded == 0 else keys",
           "scores = weights[:extent]",
           *parts.row(reading.element)]
    max_over_4 = float_literal(float(np.finfo(dtype).max) / 4, dtype)
    return [decorator(parallel and rank > 2), f"def {parts.signature}:",
            "    rows, keys, depth, depth_v = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]",
            "    # Operand elements up to `limit`: no sum of d or dv products of them, times the scale, overflows.",
            f"    limit = np.sqrt({max_over_4} / (depth * {float_literal(abs(node.attrs['scale']), dtype)} + "
            f"2 * depth_v + 1))",
            *(f"    {line}" for line in (mask_lines if reading.shared else [])),
            *loop,
            *(f"{indent}{view} = {row_view(array, heads)}" for view, array in parts.views),
            *(indent + line for line in head),
            f"{indent}for i in range(width):",
            *(f"{indent}    {line}" for line in row),
            *(indent + line for line in parts.written)]


def _weights_of_row(node: Node, element: str) -> list[str]:
    """Lines setting `scores` to row i's softmax(q k^T scale + mask) over its first `extent` keys, operation for
    operation as ir/ops/attention.py's _probabilities computes it."""
    dtype = node.output.type.dtype
    scale = float_literal(node.attrs["scale"], dtype)
    return ["for j in range(extent):",
            "    scores[j] = 0",
            "for c in range(depth):  # q_i . k_j for every key j at once, along k^T's contiguous rows",
            "    add_scaled(scores, q_head[i, c], keys_t[c])",
            "for j in range(extent):",
            f"    scores[j] = scores[j] * {scale} + {element.format(j='j')}",
            *row_peak("scores", dtype),
            *softmax_row("scores", "scores", "extent", dtype)]


def _source(node: Node, parallel: bool, what: str, parts: _Parts) -> KernelSource:
    q, mask = node.inputs[0].type, node.inputs[3].type
    threads = "(batch, head) matrices in parallel (prange)" if parallel and len(q.shape) > 2 else "one thread"
    title = [f"{node.op}: {q.dtype}, rank {len(q.shape)}, scale {node.attrs['scale']!r}, mask "
             f"{_broadcast_pattern(mask)} (_ any size, 1 a size-1 axis), {threads}", what]
    helpers = (reductions("row_sum", "row_sum_of_products", "row_max")
               + [ADD_SCALED.format(decorator=decorator(False, inline=True))] + float32_helpers(q.dtype, "exp"))
    # `small_only`: kept to backend.SMALL_ONLY_MAX_ELEMENTS elements, as measured (backend.py's docstring):
    # NumPy's fused kernel is faster beyond, where its GEMMs are BLAS's and its exp NumPy's SIMD one.
    return KernelSource(node.op, node.op, module_text(title, helpers, _kernel(node, parallel, parts)),
                        small_only=True)


def attention_source(node: Node, parallel: bool) -> KernelSource:
    """softmax(q k^T scale + mask) v, a query row at a time (q (..., T, d), k (..., S, d), v (..., S, dv))."""
    def row(element: str) -> list[str]:
        return [*_weights_of_row(node, element),
                "for c in range(depth_v):  # weights . v",
                "    out_head[i, c] = row_sum_of_products(scores, values_t[c])"]

    parts = _Parts("attention(out, q, k, v, mask)", [("q_head", "q"), ("k_head", "k"), ("v_head", "v"),
                                                     ("out_head", "out")], [("q_head", "depth")], [], row)
    return _source(node, parallel, "softmax(q k^T scale + mask) v a query row at a time, as ir/ops/attention.py "
                                   "computes it", parts)


def attention_grad_source(node: Node, parallel: bool) -> KernelSource:
    """dq, dk, dv of attention into grads[0], grads[1], grads[2], a query row at a time: P_i again, then
    dS_ij = (dout_i . v_j - dout_i . out_i) P_ij scale, dq_i = sum_j dS_ij k_j, dk_j += dS_ij q_i,
    dv_j += P_ij dout_i (dk and dv summed per (batch, head) in scratch, transposed, then written)."""
    dtype = node.output.type.dtype
    scale = float_literal(node.attrs["scale"], dtype)

    def row(element: str) -> list[str]:
        return [*_weights_of_row(node, element),
                "row_dot = row_sum_of_products(dout_head[i], out_head[i])",
                "d_row = d_scores[:extent]",
                "for j in range(extent):",
                "    d_row[j] = 0",
                "for c in range(depth_v):  # dout_i . v_j for every key j at once, along v^T's contiguous rows",
                "    add_scaled(d_row, dout_head[i, c], values_t[c])",
                "for j in range(extent):",
                f"    d_row[j] = (d_row[j] - row_dot) * scores[j] * {scale}",
                "for c in range(depth):",
                "    dq_head[i, c] = row_sum_of_products(d_row, keys_t[c])",
                "    add_scaled(dk_t[c, :extent], q_head[i, c], d_row)",
                "for c in range(depth_v):",
                "    add_scaled(dv_t[c, :extent], dout_head[i, c], scores)"]

    parts = _Parts("attention_grad(grads, q, k, v, mask, out, dout)",
                   [("q_head", "q"), ("k_head", "k"), ("v_head", "v"), ("out_head", "out"), ("dout_head", "dout"),
                    ("dq_head", "grads[0]"), ("dk_head", "grads[1]"), ("dv_head", "grads[2]")],
                   [("q_head", "depth"), ("out_head", "depth_v"), ("dout_head", "depth_v")],
                   [f"dk_t = np.zeros((depth, keys), np.{dtype})",
                    f"dv_t = np.zeros((depth_v, keys), np.{dtype})",
                    f"d_scores = np.empty(keys, np.{dtype})"],
                   row,
                   [*_transposed("dk_head", "dk_t", "depth", "keys"),
                    *_transposed("dv_head", "dv_t", "depth_v", "keys")])
    return _source(node, parallel, "dq, dk, dv packed as (3, ...), recomputing each query row's weights, as "
                                   "ir/ops/attention.py computes them", parts)
