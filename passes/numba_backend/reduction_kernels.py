"""Generated kernels for the reductions of a training step's backward: sum over leading axes (a bias's gradient),
layer norm's gradient with respect to gamma, and scatter_add (an embedding's gradient). Each reads its input once,
on one thread (a sum into a shared result row does not split over rows without a second pass).

Where NumPy's order of summation can be followed, the kernel follows it and gives NumPy's bits:

  - sum over leading axes: NumPy's iterator walks a C-contiguous input in memory order, adding each row into the
    result row elementwise, starting from 0; the kernel adds the rows in that order. (When the result has a single
    element, NumPy sums pairwise instead: that case keeps NumPy's kernel.)
  - scatter_add: NumPy's kernel (ir/ops/shape_ops.py) sorts the rows stably by index and adds each run with
    np.add.reduceat: the run's first row plus the pairwise sum (numpy/_core/src/umath/loops_utils.h.src), column
    by column, of the others. The kernel groups the rows by a stable counting sort and adds them in that order,
    8 rows of lanes at a time (PAIRWISE_BLOCKS_LINES).

For another layout (a transposed view, a broadcast) NumPy orders a sum by the layout's strides, so the sum takes
the op's own NumPy kernel there. That check runs in a Python function around the compiled one (the `entry`), as
does scatter_add's error for an index out of range, raised by the op's own check.

layer_norm_gamma_grad sums g x^ over rows; NumPy's kernel sums with BLAS matrix-vector products (along rows for
the mean and variance, then across rows), in BLAS's own order, so there the kernel differs by a reordered sum:
with u the unit roundoff, n rows of width W, s = 1 / std and a = mean |x| of each row, each output element is
within u sum_rows |g| (s W a + |x^| (W / 2 + n + 7)) of the exact value (to first order in u), as NumPy's is.
"""

from __future__ import annotations

from typing import Optional

from graphgpt.ir import Node

from .rowwise_kernels import _normalized_rows
from .source_text import (KernelSource, body_indent, decorator, module_text,
                          numpy_fallback, reductions, row_loop, row_view)

# NumPy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src): fewer than 8 terms one by one from 0; up
# to 128, 8 accumulators over the terms modulo 8, combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)),
# then the remainder one by one; beyond, the sum of two halves, the first a multiple of 8 long. Never
# reassociated: the order is the point. NumPy recurses into the halves; the kernel walks the same tree from a plan
# (the cached machine code of a recursive function crashes when Numba loads it: numba/numba#6061), over whole rows
# elementwise (np.add.reduceat adds a run column by column, each column pairwise). All in the one function: a
# helper function per step took Numba 2.7 s to compile, against about 1 s.
PAIRWISE_PLAN_LINES = """\
# NumPy's halving of the count rows from start into blocks of at most 128, in the order its recursion adds them:
# rows (start, count) of a block to sum, and (0, -1) for "add the last two partial sums"
pending[0, 0], pending[0, 1], pending[0, 2] = start, count, 0
top, steps = 1, 0
while top > 0:
    first, length, halved = pending[top - 1, 0], pending[top - 1, 1], pending[top - 1, 2]
    if length <= 128 or halved:
        plan[steps, 0], plan[steps, 1] = (first, length) if length <= 128 else (0, -1)
        steps += 1
        top -= 1
        continue
    pending[top - 1, 2] = 1
    half = length // 2
    half -= half % 8
    pending[top, 0], pending[top, 1], pending[top, 2] = first + half, length - half, 0
    pending[top + 1, 0], pending[top + 1, 1], pending[top + 1, 2] = first, half, 0
    top += 2"""

# The plan's blocks added on a stack of partial sums (rows of `partial`), each block with the 8 accumulators as
# the rows of `lanes`; the sum ends in partial[0].
PAIRWISE_BLOCKS_LINES = """\
top = 0
for step in range(steps):
    first, length = plan[step, 0], plan[step, 1]
    if length < 0:
        top -= 1
        for j in range(width):
            partial[top - 1, j] = partial[top - 1, j] + partial[top, j]
        continue
    total = partial[top]
    top += 1
    if length < 8:
        for j in range(width):
            total[j] = 0
        for k in range(first, first + length):
            row = rows[order[k]]
            for j in range(width):
                total[j] += row[j]
        continue
    for lane in range(8):
        row = rows[order[first + lane]]
        for j in range(width):
            lanes[lane, j] = row[j]
    stop = first + length - length % 8
    for k in range(first + 8, stop, 8):
        for lane in range(8):
            row = rows[order[k + lane]]
            for j in range(width):
                lanes[lane, j] += row[j]
    for j in range(width):
        total[j] = ((lanes[0, j] + lanes[1, j]) + (lanes[2, j] + lanes[3, j])) + (
            (lanes[4, j] + lanes[5, j]) + (lanes[6, j] + lanes[7, j]))
    for k in range(stop, first + length):
        row = rows[order[k]]
        for j in range(width):
            total[j] += row[j]"""


def sum_source(node: Node, parallel: bool) -> Optional[KernelSource]:
    """A sum over leading axes (every axis up to some axis before the last), with or without keepdims; None for
    other axes, which keep NumPy's kernel (along the last axis NumPy's pairwise sums are as fast as a kernel
    repeating them: 145 us each over 16x4x64x64)."""
    x = node.inputs[0].type
    axes, keepdims = tuple(node.attrs["axes"]), node.attrs["keepdims"]
    if not axes or axes != tuple(range(len(axes))) or len(axes) >= len(x.shape):
        return None
    # Four rows at a time, added in their order: a quarter of the loads and stores of the result row.
    kernel = [decorator(False),
              "def sum_rows(out, x):",
              "    kept = out.size",
              "    rows = x.reshape(x.size // kept, kept)",
              "    total = out.reshape(kept)",
              "    total[:] = 0",
              "    stop = rows.shape[0] - rows.shape[0] % 4",
              "    for row in range(0, stop, 4):",
              "        for j in range(kept):",
              "            total[j] = (((total[j] + rows[row, j]) + rows[row + 1, j]) + rows[row + 2, j]) + (",
              "                rows[row + 3, j])",
              "    for row in range(stop, rows.shape[0]):",
              "        for j in range(kept):",
              "            total[j] += rows[row, j]"]
    title = [f"sum over axes {list(axes)}, keepdims {keepdims}: {x.dtype}, one thread",
             "row after row in memory order from 0, as NumPy sums a C-contiguous input whose result has more than "
             "one element; otherwise NumPy's own sum"]
    condition = "x.flags.c_contiguous and out.flags.c_contiguous and out.size > 1"
    wrapper = numpy_fallback("sum", condition, "sum_rows", "out, x", {"axes": axes, "keepdims": keepdims})
    return KernelSource("sum", "sum", module_text(title, [], [*kernel, "", "", *wrapper]))


def layer_norm_gamma_grad_source(node: Node, parallel: bool) -> KernelSource:
    """The gradient of layer norm with respect to gamma: the sum over rows of g x^, x^ recomputed row by row."""
    x = node.inputs[1].type
    eps = node.attrs["eps"]
    rank = len(x.shape)
    loop, indices = row_loop(rank, False, shape_of="x")
    indent = body_indent(rank)
    kernel = [decorator(False),
              "def layer_norm_gamma_grad(out, g, x):",
              "    out[:] = 0",
              "    out_row = np.empty_like(out)  # x - mean of the current row (named as _normalized_rows writes it)",
              *loop,
              f"{indent}x_row = {row_view('x', indices)}",
              f"{indent}g_row = {row_view('g', indices)}",
              *_normalized_rows(indent, x.dtype, eps, normalize=False),
              f"{indent}for j in range(width):",
              f"{indent}    out[j] += (out_row[j] * inverse_std) * g_row[j]"]
    title = [f"layer_norm_gamma_grad: {x.dtype}, rank {rank}, eps {eps!r}, one thread",
             "the sum over rows of g x^, as ir/ops/gradients.py computes it (its sums in another order)"]
    return KernelSource("layer_norm_gamma_grad", "layer_norm_gamma_grad",
                        module_text(title, reductions("row_sum", "row_sum_of_products"), kernel))


def scatter_add_source(node: Node, parallel: bool) -> KernelSource:
    """A (num_rows, width) table of zeros with each row of updates added at its index, in np.add.reduceat's order.
    The compiled kernel takes the updates as (rows, width) and the indices flat; an index out of range leaves it
    undone and the op's own check raises."""
    updates = node.inputs[0].type
    kernel = [decorator(False),
              "def scatter_rows(out, rows, indices):",
              "    table, width = out.shape",
              "    for k in range(indices.shape[0]):",
              "        if indices[k] < 0 or indices[k] >= table:",
              "            return False",
              "    # a stable counting sort: the positions of the rows of each index, in their order",
              "    starts = np.zeros(table + 1, np.int64)",
              "    for k in range(indices.shape[0]):",
              "        starts[indices[k] + 1] += 1",
              "    for index in range(table):",
              "        starts[index + 1] += starts[index]",
              "    filled = np.empty(table, np.int64)",
              "    for index in range(table):",
              "        filled[index] = starts[index]",
              "    order = np.empty(indices.shape[0], np.int64)",
              "    for k in range(indices.shape[0]):",
              "        order[filled[indices[k]]] = k",
              "        filled[indices[k]] += 1",
              "    lanes = np.empty((8, width), out.dtype)",
              "    partial = np.empty((64, width), out.dtype)  # two per level of a tree of depth <= 32",
              "    plan = np.empty((2 * (indices.shape[0] // 32 + 2), 2), np.int64)",
              "    pending = np.empty((130, 3), np.int64)  # (start, count, halved)",
              "    for index in range(table):",
              "        start, count = starts[index], starts[index + 1] - starts[index]",
              "        out_row = out[index]",
              "        if count == 0:",
              "            for j in range(width):",
              "                out_row[j] = 0",
              "            continue",
              "        first_row = rows[order[start]]",
              "        for j in range(width):",
              "            out_row[j] = first_row[j]",
              "        if count == 1:",
              "            continue",
              "        # the others' pairwise sum, added to the first row",
              "        start, count = start + 1, count - 1",
              *("        " + line for line in PAIRWISE_PLAN_LINES.splitlines()),
              *("        " + line for line in PAIRWISE_BLOCKS_LINES.splitlines()),
              "        for j in range(width):",
              "            out_row[j] += partial[0, j]",
              "    return True"]
    wrapper = ["from graphgpt.ir.ops.shape_ops import _check_indices",
               "",
               "",
               "def scatter_add(out, updates, indices):",
               "    flat = indices.reshape(-1)",
               "    if not scatter_rows(out, updates.reshape(flat.shape[0], out.shape[1]), flat):",
               "        _check_indices(indices, out.shape[0], 'scatter_add')  # raises, as NumPy's kernel does"]
    title = [f"scatter_add: {updates.dtype}, one thread",
             "each index's rows: the first plus the pairwise sum of the others, as np.add.reduceat adds them "
             "in ir/ops/shape_ops.py"]
    return KernelSource("scatter_add", "scatter_add", module_text(title, [], [*kernel, "", "", *wrapper]))
