"""Generated kernels for the row-wise ops: layer norm and its gradient with respect to x, softmax and its gradient
over the last axis, and cross entropy's loss and its gradient. Each reads a row a few times while it is in the L1 cache and writes it once: one pass over memory, where
the NumPy kernels of ir/ops/composites.py and ir/ops/gradients.py make one pass per ufunc.

Each kernel repeats the NumPy kernel's arithmetic step for step, in the same dtype and order (so the elementwise
parts round identically); what differs is the order of each sum along a row (NumPy sums with a BLAS
matrix-vector product, the kernel in vector lanes) and, for softmax, how exp is computed (source_text.exp_call).
Cross entropy's mean over positions is summed in float64 and rounded once (NumPy sums pairwise in the dtype).

    print(layer_norm_source(node, parallel=True).text)
"""

from __future__ import annotations

from typing import Optional, Sequence

from graphgpt.ir import Node

from .source_text import (KernelSource, body_indent,
                          decorator, exp_call, float32_helpers, float_literal, library_calls, module_text,
                          numpy_kernel_line, reductions, row_loop, row_view)


def _threads(parallel: bool) -> str:
    return "rows in parallel (prange)" if parallel else "rows one after another"


def _normalized_rows(indent: str, dtype: str, eps: float, normalize: bool) -> list[str]:
    """Lines setting out_row to x_row minus its mean (and, if `normalize`, times inverse_std) and `inverse_std` to
    1 / sqrt(biased variance + eps), as ir/ops/composites.py normalize_rows computes them."""
    lines = [f"mean = row_sum(x_row) / np.{dtype}(width)",
             "for j in range(width):",
             "    out_row[j] = x_row[j] - mean",
             f"inverse_std = row_sum_of_products(out_row, out_row) / np.{dtype}(width)",
             f"inverse_std = {float_literal(1.0, dtype)} / np.sqrt(inverse_std + {float_literal(eps, dtype)})"]
    if normalize:
        lines += ["for j in range(width):", "    out_row[j] = out_row[j] * inverse_std"]
    return [indent + line for line in lines]


def _opening(signature: str, rank: int, parallel: bool, row_arrays: Sequence[str]) -> tuple[list[str], str]:
    """The kernel's first lines, down to the views of the current row of each of `row_arrays` (`x_row`), and the
    indentation of the row's body."""
    loop, indices = row_loop(rank, parallel)
    indent = body_indent(rank)
    views = [f"{indent}{name}_row = {row_view(name, indices)}" for name in row_arrays]
    return [decorator(parallel), f"def {signature}:", *loop, *views], indent


def layer_norm_source(node: Node, parallel: bool) -> KernelSource:
    """(x - mean) / sqrt(biased variance + eps) * gamma + beta over the last axis."""
    x = node.inputs[0].type
    eps = node.attrs["eps"]
    rank = len(x.shape)
    opening, indent = _opening("layer_norm(out, x, gamma, beta)", rank, parallel, ["x", "out"])
    kernel = [*opening,
              *_normalized_rows(indent, x.dtype, eps, normalize=False),
              f"{indent}for j in range(width):",
              f"{indent}    out_row[j] = out_row[j] * inverse_std * gamma[j] + beta[j]"]
    title = [f"layer_norm over the last axis: {x.dtype}, rank {rank}, eps {eps!r}, {_threads(parallel)}",
             "(x - mean) / sqrt(biased variance + eps) * gamma + beta, as ir/ops/composites.py computes it"]
    return KernelSource("layer_norm", "layer_norm",
                        module_text(title, reductions("row_sum", "row_sum_of_products"), kernel))


def layer_norm_grad_source(node: Node, parallel: bool) -> KernelSource:
    """The gradient of layer norm with respect to x: (g gamma - mean(g gamma) - x^ mean(g gamma x^)) / std."""
    x = node.inputs[1].type
    eps = node.attrs["eps"]
    rank = len(x.shape)
    width = f"np.{x.dtype}(width)"
    opening, indent = _opening("layer_norm_grad(out, g, x, gamma)", rank, parallel, ["g", "x", "out"])
    kernel = [*opening,
              *_normalized_rows(indent, x.dtype, eps, normalize=True),  # out_row holds x^
              f"{indent}projection = row_sum_of_triple_products(g_row, gamma, out_row) / {width}",
              f"{indent}mean_scaled = row_sum_of_products(g_row, gamma) / {width}",
              f"{indent}for j in range(width):",
              f"{indent}    out_row[j] = (g_row[j] * gamma[j] - out_row[j] * projection - mean_scaled) * inverse_std"]
    title = [f"layer_norm_grad over the last axis: {x.dtype}, rank {rank}, eps {eps!r}, {_threads(parallel)}",
             "(g gamma - x^ mean(g gamma x^) - mean(g gamma)) / std, as ir/ops/gradients.py computes it"]
    helpers = reductions("row_sum", "row_sum_of_products", "row_sum_of_triple_products")
    return KernelSource("layer_norm_grad", "layer_norm_grad", module_text(title, helpers, kernel))


# Rows whose maxima are all found before any of their exps (the kernels' shifted exps, rows_with_peaks): each
# row's max is a chain of dependent comparisons, and a row's exps and sums between two such chains kept the CPU
# from running the next row's chain beside them. Found for 16 rows, then their exps: a softmax over 8 x 4 x 64
# rows of 64 in 74 us rather than 91 (row by row, with row_max's four running maxima; 112 with one), 4 x 8 x 128
# rows of 128 360 rather than 444 (525), 1024 rows of 99 90 rather than 109 (128); interleaved medians, one
# thread. The same bits: only the order of the work changes.
ROWS_PER_BLOCK = 16


def row_peak(row: str, dtype: str) -> list[str]:
    """Lines (unindented) setting `peak` to the max of `row` as ir/ops/composites.py's _row_max takes it, NaN aside
    (a row holding NaN comes out NaN all the same: its exp and total are NaN, as with np.maximum.reduce's NaN max),
    and 0 for a row of -inf only (so that x - max stays -inf there, not -inf - -inf = NaN). Its module needs
    reductions("row_max")."""
    return [f"peak = row_max({row})", f"peak = {float_literal(0.0, dtype)} if peak == -np.inf else peak"]


def peaks_scratch(dtype: str) -> str:
    """The line making the block's peaks that rows_with_peaks fills (once per thread that runs blocks)."""
    return f"peaks = np.empty({ROWS_PER_BLOCK}, np.{dtype})"


def rows_with_peaks(matrix: str, rows: str, body: Sequence[str], dtype: str, parallel: bool,
                    peaks_made: bool = False) -> list[str]:
    """Lines (unindented) running `body` (lines, unindented) for each row `r` of 0..rows-1 with `peak` set to the
    row_peak of `matrix`[r]. The rows go in blocks of ROWS_PER_BLOCK, each block's peaks found first; `parallel`:
    the blocks are the prange loop (each makes its own peaks); `peaks_made`: the caller made `peaks`
    (peaks_scratch) outside its own loop, so that it is not made again for every matrix."""
    made = [] if parallel or peaks_made else [peaks_scratch(dtype)]
    return [*made,
            f"for block in {'prange' if parallel else 'range'}(({rows} + {ROWS_PER_BLOCK - 1}) // {ROWS_PER_BLOCK}):",
            *(["    " + peaks_scratch(dtype)] if parallel else []),
            f"    first = block * {ROWS_PER_BLOCK}",
            f"    last = min(first + {ROWS_PER_BLOCK}, {rows})",
            "    for r in range(first, last):",
            *("        " + line for line in row_peak(f"{matrix}[r]", dtype)),
            "        peaks[r - first] = peak",
            "    for r in range(first, last):",
            "        peak = peaks[r - first]",
            *("        " + line for line in body)]


def shifted_exps(x: str, out: str, width: str, dtype: str) -> list[str]:
    """Lines (unindented) setting the row `out` to exp(x - peak) of the row `x` and `total` to its sum, 1 where it
    is 0 (a fully masked row). Its module needs reductions("row_sum") and float32_helpers(dtype, "exp")."""
    return [f"for j in range({width}):",
            f"    {out}[j] = " + exp_call(f"{x}[j] - peak", dtype),
            f"total = row_sum({out})",
            "if total == 0:  # a fully masked row",
            f"    total = {float_literal(1.0, dtype)}"]


def softmax_row(x: str, out: str, width: str, dtype: str) -> list[str]:
    """Lines (unindented) setting the row `out` to the softmax of the row `x` (`out` may be `x`), both of length
    `width`, given `peak` (rows_with_peaks), with ir/ops/composites.py's rules: a row holding NaN gives NaN, a
    fully masked one (all -inf) zeros. Its module needs reductions("row_sum") and float32_helpers(dtype, "exp")."""
    return [*shifted_exps(x, out, width, dtype),
            f"for j in range({width}):",
            f"    {out}[j] = {out}[j] / total"]


def softmax_source(node: Node, parallel: bool) -> Optional[KernelSource]:
    """Softmax over the last axis (None along another axis: that stays NumPy's). A row holding NaN gives NaN, a
    fully masked row (all -inf) zeros, as ir/ops/composites.py's softmax does."""
    x = node.inputs[0].type
    rank = len(x.shape)
    if node.attrs["axis"] not in (-1, rank - 1):
        return None
    dtype = x.dtype
    row = softmax_row("x_row", "out_row", "width", dtype)
    if rank == 1:  # one row
        body = ["width = out.shape[0]", "x_row, out_row = x, out", *row_peak("x", dtype), *row]
        kernel = [decorator(False), "def softmax(out, x):", *("    " + line for line in body)]
    else:  # the matrices (the last two axes), then blocks of their rows
        matrix_threads = parallel and rank > 2  # the matrices in parallel, each thread its peaks; else made once
        loop, indices = row_loop(rank - 1, matrix_threads, shape="out.shape[:-1]", width="rows")
        indent = body_indent(rank - 1)
        matrices = [f"x_rows = {row_view('x', indices)}", f"out_rows = {row_view('out', indices)}"]
        per_row = ["x_row = x_rows[r]", "out_row = out_rows[r]", *row]
        blocks = rows_with_peaks("x_rows", "rows", per_row, dtype, parallel and rank == 2,
                                 peaks_made=rank > 2 and not matrix_threads)
        kernel = [decorator(parallel), "def softmax(out, x):", "    width = out.shape[-1]",
                  *(["    " + peaks_scratch(dtype)] if rank > 2 and not matrix_threads else []), *loop,
                  *(indent + line for line in matrices + blocks)]
    title = [f"softmax over the last axis: {dtype}, rank {rank}, {_threads(parallel)}",
             "exp(x - max) / sum, a fully masked row (all -inf) giving zeros, as ir/ops/composites.py computes it"]
    helpers = reductions("row_sum", "row_max") + float32_helpers(dtype, "exp")
    return KernelSource("softmax", "softmax", module_text(title, helpers, kernel),
                        small_only=library_calls(dtype, {"exp"}))


def cross_entropy_source(node: Node, parallel: bool) -> KernelSource:
    """The mean over positions of -log softmax(logits)[target], one row at a time: the row's log-sum-exp, less the
    target's logit (log once per row: a library call, but not per element). One thread: the rows' losses are
    summed into one number. No positions (NaN) and a target out of range (the op's error) are the op's NumPy
    kernel's."""
    dtype = node.inputs[0].type.dtype
    kernel = [decorator(False),
              "def cross_entropy_rows(out, logits, targets):",
              "    rows, classes = logits.shape",
              f"    exps = np.empty(classes, np.{dtype})",
              "    picked = 0.0  # the sum of the targets' log-probabilities, in float64",
              *("    " + line for line in rows_with_peaks("logits", "rows", [
                  "target = targets[r]",
                  "if target < 0 or target >= classes:",
                  "    return False",
                  "x_row = logits[r]",
                  *shifted_exps("x_row", "exps", "classes", dtype),
                  "# log softmax at the target, rounded as ir/ops/composites.py's _log_softmax_into rounds it",
                  "picked += (x_row[target] - peak) - np.log(total)"], dtype, False)),
              "    out[0] = -(picked / rows)",
              "    return True"]
    wrapper = [*numpy_kernel_line("cross_entropy"),
               "def cross_entropy(out, logits, targets):",
               "    classes = logits.shape[-1]",
               "    if targets.size == 0 or not cross_entropy_rows(out.reshape(1), logits.reshape(-1, classes),",
               "                                                   targets.reshape(-1)):",
               "        numpy_kernel(out, logits, targets)  # NaN for no positions; raises for a target out of range"]
    title = [f"cross_entropy over the last axis: {dtype}, one thread",
             "-mean(log softmax(logits)[target]), as ir/ops/composites.py computes it (the mean summed in float64)"]
    return _exp_rows_module("cross_entropy", dtype, title, [*kernel, "", "", *wrapper])


def softmax_grad_source(node: Node, parallel: bool) -> Optional[KernelSource]:
    """y (g - sum(g y)) over the last axis (None along another axis: that stays NumPy's), as
    ir/ops/gradients.py computes it; only the sum's order differs."""
    y = node.inputs[1].type
    rank = len(y.shape)
    if node.attrs["axis"] not in (-1, rank - 1):
        return None
    opening, indent = _opening("softmax_grad(out, g, y)", rank, parallel, ["g", "y", "out"])
    kernel = [*opening,
              f"{indent}total = row_sum_of_products(g_row, y_row)",
              f"{indent}for j in range(width):",
              f"{indent}    out_row[j] = (g_row[j] - total) * y_row[j]"]
    title = [f"softmax_grad over the last axis: {y.dtype}, rank {rank}, {_threads(parallel)}",
             "y (g - sum(g y)), as ir/ops/gradients.py computes it"]
    return KernelSource("softmax_grad", "softmax_grad", module_text(title, reductions("row_sum_of_products"), kernel))


def cross_entropy_grad_source(node: Node, parallel: bool) -> KernelSource:
    """(softmax(logits) - onehot(targets)) times g / positions, one row at a time, as ir/ops/gradients.py computes
    it; the softmax as softmax_source's. An output with no elements or not C-contiguous, and a target out of range
    (the op's error), are the op's NumPy kernel's."""
    dtype = node.inputs[1].type.dtype
    kernel = [decorator(False),
              "def cross_entropy_grad_rows(out, logits, targets, scale):",
              "    rows, classes = logits.shape",
              *("    " + line for line in rows_with_peaks("logits", "rows", [
                  "target = targets[r]",
                  "if target < 0 or target >= classes:",
                  "    return False",
                  "x_row = logits[r]",
                  "out_row = out[r]",
                  *softmax_row("x_row", "out_row", "classes", dtype),
                  f"out_row[target] = out_row[target] - {float_literal(1.0, dtype)}",
                  "for j in range(classes):",
                  "    out_row[j] = out_row[j] * scale"], dtype, False)),
              "    return True"]
    wrapper = [*numpy_kernel_line("cross_entropy_grad"),
               "def cross_entropy_grad(out, g, logits, targets):",
               "    classes = logits.shape[-1]",
               "    if out.size == 0 or not out.flags.c_contiguous or not cross_entropy_grad_rows(",
               "            out.reshape(-1, classes), logits.reshape(-1, classes), targets.reshape(-1),",
               "            g * out.dtype.type(1.0 / targets.size)):  # a scalar of the dtype, as NumPy's kernel rounds it",
               "        numpy_kernel(out, g, logits, targets)  # raises for a target out of range"]
    title = [f"cross_entropy_grad: {dtype}, one thread",
             "(softmax(logits) - onehot(targets)) g / positions, as ir/ops/gradients.py computes it"]
    return _exp_rows_module("cross_entropy_grad", dtype, title, [*kernel, "", "", *wrapper])


def _exp_rows_module(op: str, dtype: str, title: list[str], lines: list[str]) -> KernelSource:
    """The module of a row kernel taking exp of its rows and summing them (cross entropy's two), whose entry is
    named as its op: per element, exp is a library call outside float32 (see library_calls)."""
    helpers = reductions("row_sum", "row_max") + float32_helpers(dtype, "exp")
    return KernelSource(op, op, module_text(title, helpers, lines), small_only=library_calls(dtype, {"exp"}))
