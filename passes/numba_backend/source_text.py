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
    """A generated kernel: its module source, the function a schedule step calls (`entry`), and its op.
    `transcendental`: it computes exp, tanh, log or pow per element, which NumPy's SIMD versions do faster on
    large arrays (see backend.TRANSCENDENTAL_MAX_ELEMENTS)."""

    op: str
    entry: str
    text: str
    transcendental: bool = False


def decorator(parallel: bool, reassociate: bool = False, inline: bool = False) -> str:
    """The @njit line. error_model="numpy": a division by zero gives inf or NaN, as in NumPy, never raises.
    nogil: a data-parallel shard's kernels run at once on their threads. cache: compiled once per machine.
    `reassociate` (reductions only) lets LLVM sum a row in vector lanes, in another order than one by one: the
    only thing a kernel computes in a different order than NumPy does, and only inside a sum. `inline` (helpers
    only): Numba copies the function into each caller, where LLVM left a call to a helper called in an inner loop
    (the caller's flags then apply to it)."""
    options = ['cache=True', 'nogil=True', 'error_model="numpy"']
    if parallel:
        options.append("parallel=True")
    if reassociate:
        options.append('fastmath={"reassoc"}')
    if inline:
        options.append('inline="always"')
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


def row_loop(rank: int, parallel: bool, shape_of: str = "out", shape: str = "") -> tuple[list[str], list[str]]:
    """Lines opening the loop over rows of arrays of `rank` (>= 1), and the index names of the leading axes.

    The lines end inside the loop body (indented 8 spaces; for rank 1 there is no loop: the body is indented 4 and
    the whole array is the one row). `width` is the last axis's length. The sizes are `shape_of`'s shape, or the
    tuple expression `shape` (`q.shape[:-1]`: a loop over the matrices of q, width its rows).

    >>> print("\\n".join(row_loop(3, True)[0]))
        d0, d1, width = out.shape
        for row in prange(d0 * d1):
            i1 = row % d1
            i0 = row // d1
    """
    shape = shape or f"{shape_of}.shape"
    if rank == 1:
        return [f"    width = {shape}[0]"], []
    leading = [f"d{axis}" for axis in range(rank - 1)]
    indices = [f"i{axis}" for axis in range(rank - 1)]
    loop = "prange" if parallel else "range"
    lines = [f"    {', '.join(leading)}, width = {shape}",
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


# float32 exp and tanh from arithmetic and integer shifts only, so that LLVM vectorises the loops calling them:
# the C library's expf and tanhf are scalar calls, which made a GELU over 256K elements 17x slower than NumPy's
# SIMD tanh. Both are computed in float64 (exp as 2^n exp(r), |r| <= ln2 / 2, exp(r) by its Taylor polynomial to
# degree 10: relative error below 1e-12) and rounded once to float32, so they are within about half a ULP of the
# exact value (checked over every float32 input: see tests/test_numba_kernels.py). NaN, infinities, zeros of
# either sign and tiny inputs (where tanh x rounds to x) are passed through or clamped as the functions require.
EXP_IN_FLOAT64 = '''{decorator}
def exp_in_float64(y):
    # exp(y) for y in [-15, 27]: 2^n exp(r) with n in [-22, 40], 2^n made exactly as (1 << (n + 22)) 2^-22
    n = np.int64(np.floor(y * 1.4426950408889634 + 0.5))
    r = (y - n * 0.6931471803691238) - n * 1.9082149292705877e-10
    p = 1.0 + r * (1.0 + r * (0.5 + r * (0.16666666666666666 + r * (0.041666666666666664 + r * (0.008333333333333333 + r * (0.001388888888888889 + r * (0.0001984126984126984 + r * (2.48015873015873e-05 + r * (2.7557319223985893e-06 + r * (2.755731922398589e-07))))))))))
    return p * (np.float64(np.int64(1) << (n + 22)) * 2.384185791015625e-07)'''

EXP_FLOAT32 = '''{decorator}
def exp32(x):
    v = np.float64(x)
    v = -120.0 if not v >= -120.0 else (100.0 if v > 100.0 else v)  # exp rounds to 0 below, to inf above
    e = exp_in_float64(v * 0.125)  # in range for every v, then squared three times
    e = e * e
    e = e * e
    return x if x != x else np.float32(e * e)'''

TANH_FLOAT32 = '''{decorator}
def tanh32(x):
    a = np.float64(x)
    a = -a if a < 0.0 else a
    a = 10.0 if not a <= 10.0 else a  # tanh rounds to 1 from 9.01; NaN computes garbage, not returned
    t = 1.0 - 2.0 / (exp_in_float64(2.0 * a) + 1.0)
    t = t if x > 0 else -t
    # below 2^-12, tanh x rounds to x (keeping -0.0); NaN fails the comparison and is returned
    return np.float32(t) if abs(x) >= np.float32(0.000244140625) else x'''


def exp_call(argument: str, dtype: str) -> str:
    """exp of `argument`: the vectorisable exp32 in float32 (its module must include float32_helpers), the C
    library's in float64."""
    return f"exp32({argument})" if dtype == "float32" else f"np.exp({argument})"


def tanh_call(argument: str, dtype: str) -> str:
    """tanh of `argument`, as exp_call."""
    return f"tanh32({argument})" if dtype == "float32" else f"np.tanh({argument})"


def float32_helpers(dtype: str, *functions: str) -> list[str]:
    """The helper functions exp_call and tanh_call need in `dtype`, for `functions` ("exp", "tanh")."""
    if dtype != "float32" or not functions:
        return []
    templates = [EXP_IN_FLOAT64] + [{"exp": EXP_FLOAT32, "tanh": TANH_FLOAT32}[name] for name in sorted(functions)]
    return [template.format(decorator=decorator(False)) for template in templates]


def reductions(*templates: str) -> list[str]:
    """The sources of these reduction helpers, with their @njit line (reassociating, never parallel: they run
    inside a row of a kernel's loop)."""
    return [template.format(decorator=decorator(False, reassociate=True)) for template in templates]
