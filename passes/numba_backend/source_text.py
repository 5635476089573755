"""The pieces every generated kernel's source is written from: its header and imports, the @njit line, float
literals of its dtype, the loop over rows with the row views of its arrays, and the reductions along a row.

A kernel is written for a rank and a dtype, never for sizes: sizes are read from the arrays' shapes at run time,
so the same source (and the same compiled machine code) serves every node of its op, dtype and rank, such as
every layer's layer norm and every parameter's optimizer update. A kernel runs over "rows": every axis but the
last is a row index (flattened into one `prange` loop when the kernel is parallel), the last axis an inner loop
over a row, which is what LLVM vectorises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# What every kernel module imports: NumPy for its scalar functions and dtypes, Numba for the compiler.
IMPORTS = ["import numpy as np", "from numba import njit, prange"]


@dataclass(frozen=True)
class KernelSource:
    """A generated kernel: its module source, the function a schedule step calls (`entry`), and its op."""

    op: str
    entry: str
    text: str


def decorator(parallel: bool, reassociate: bool = False) -> str:
    """The @njit line. error_model="numpy": a division by zero gives inf or NaN, as in NumPy, never raises.
    nogil: a data-parallel shard's kernels run at once on their threads. cache: compiled once per machine.
    `reassociate` (reductions only) lets LLVM sum a row in vector lanes, in another order than one by one: the
    only thing a kernel computes in a different order than NumPy does, and only inside a sum."""
    options = ['cache=True', 'nogil=True', 'error_model="numpy"']
    if parallel:
        options.append("parallel=True")
    if reassociate:
        options.append('fastmath={"reassoc"}')
    return f"@njit({', '.join(options)})"


def float_literal(value: float, dtype: str) -> str:
    """`np.float32(0.044715)`: a constant rounded to the kernel's dtype, as NumPy rounds a Python float combined
    with an array of that dtype (NumPy 2's weak scalars). repr round-trips the double exactly."""
    return f"np.{dtype}({float(value)!r})"


def module_text(title: Sequence[str], helpers: Sequence[str], kernel: Sequence[str]) -> str:
    """A kernel's module: a comment saying what it computes, the imports, the reductions it uses, the kernel."""
    lines = [f"# {line}" for line in title] + [""] + IMPORTS
    for block in (*helpers, "\n".join(kernel)):
        lines += ["", "", block]
    return "\n".join(lines) + "\n"


def row_loop(rank: int, parallel: bool, shape_of: str = "out") -> tuple[list[str], list[str]]:
    """Lines opening the loop over rows of arrays of `rank` (>= 1), and the index names of the leading axes.

    The lines end inside the loop body (indented 8 spaces; for rank 1 there is no loop: the body is indented 4 and
    the whole array is the one row). `width` is the last axis's length.

    >>> print("\\n".join(row_loop(3, True)[0]))
        d0, d1, width = out.shape
        for row in prange(d0 * d1):
            i1 = row % d1
            i0 = row // d1
    """
    if rank == 1:
        return [f"    width = {shape_of}.shape[0]"], []
    leading = [f"d{axis}" for axis in range(rank - 1)]
    indices = [f"i{axis}" for axis in range(rank - 1)]
    loop = "prange" if parallel else "range"
    lines = [f"    {', '.join(leading)}, width = {shape_of}.shape",
             f"    for row in {loop}({' * '.join(leading)}):"]
    rest = "row"
    for axis in range(rank - 2, 0, -1):  # the last leading axis varies fastest (C order)
        lines.append(f"        i{axis} = {rest} % d{axis}")
        lines.append(f"        {'rest' if axis > 1 else 'i0'} = {rest} // d{axis}")
        rest = "rest"
    if rank == 2:
        lines.append("        i0 = row")
    return lines, indices


def body_indent(rank: int) -> str:
    """The indentation of a row's body: inside the row loop, or at the function's level for rank 1."""
    return " " * (4 if rank == 1 else 8)


def row_view(array: str, indices: Sequence[str]) -> str:
    """The row of `array` at the leading indices: `x[i0, i1]`, or the array itself when it has one axis."""
    return f"{array}[{', '.join(indices)}]" if indices else array


# Reductions along a row, each its own function so that reassociation (fastmath) applies to its sum only.
ROW_SUM = '''{decorator}
def row_sum(v):
    total = v.dtype.type(0)
    for j in range(v.shape[0]):
        total += v[j]
    return total'''

ROW_SUM_OF_PRODUCTS = '''{decorator}
def row_sum_of_products(a, b):
    total = a.dtype.type(0)
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total'''

# The sum of (a * b) * c (NumPy rounds a * b into a scratch array first). Reassociation may also regroup the
# product: that changes a term by at most two roundings, within the bound of the reordered sum.
ROW_SUM_OF_TRIPLE_PRODUCTS = '''{decorator}
def row_sum_of_triple_products(a, b, c):
    total = a.dtype.type(0)
    for j in range(a.shape[0]):
        total += (a[j] * b[j]) * c[j]
    return total'''


def reductions(*templates: str) -> list[str]:
    """The sources of these reduction helpers, with their @njit line (reassociating, never parallel: they run
    inside a row of a kernel's loop)."""
    return [template.format(decorator=decorator(False, reassociate=True)) for template in templates]
