"""The pieces every generated kernel's source is written from: its header and imports, the @njit line, float
literals of its dtype, the loop over rows with the row views of its arrays; and the helper module, one for all
kernels, defining the reductions along a row and float32 exp and tanh, which kernels import (helper_import).

A kernel is written for a rank and a dtype, never for sizes: sizes are read from the arrays' shapes at run time,
so the same source (and the same compiled machine code) serves every node of its op, dtype and rank, such as
every layer's layer norm and every parameter's optimizer update. A kernel runs over "rows": every axis but the
last is a row index (flattened into one `prange` loop when the kernel is parallel), the last axis an inner loop
over a row, which is what LLVM vectorises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .engine import register_module

# What every kernel module imports: NumPy for its scalar functions and dtypes, Numba for the compiler.
IMPORTS = ["import numpy as np", "from numba import njit, prange"]


@dataclass(frozen=True)
class KernelSource:
    """A generated kernel: its module source, the function a schedule step calls (`entry`), and its op.
    `small_only`: NumPy's kernel is faster on large arrays, so this one runs up to backend.SMALL_ONLY_MAX_ELEMENTS
    (a kernel calling a scalar library function per element, see library_calls; fused attention, by measurement)."""

    op: str
    entry: str
    text: str
    small_only: bool = False
    # Inputs the output may be written over (in place), each with an entry `{entry}_over_a{k}` (written_over).
    written_over: tuple[int, ...] = ()


def decorator(parallel: bool, reassociate: bool = False, inline: bool = False, contract: bool = False) -> str:
    """The @njit line. error_model="numpy": a division by zero gives inf or NaN, as in NumPy, never raises.
    nogil: a data-parallel shard's kernels run at once on their threads. cache: compiled once per machine.
    `reassociate` (reductions only) lets LLVM sum a row in vector lanes, in another order than one by one: the
    only thing a kernel computes in a different order than NumPy does, and only inside a sum. `inline` (helpers
    only): Numba copies the function into each caller, where LLVM left a call to a helper called in an inner loop
    (the caller's flags then apply to it). `contract` (the float32 exp only): LLVM may fuse a multiply and an add
    into one instruction, rounding once (its polynomial's accuracy was measured so)."""
    options = ['cache=True', 'nogil=True', 'error_model="numpy"']
    if parallel:
        options.append("parallel=True")
    if reassociate or contract:
        options.append("fastmath={" + ", ".join(f'"{flag}"' for flag, on in (("reassoc", reassociate),
                                                                            ("contract", contract)) if on) + "}")
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


def numpy_kernel_line(op: str) -> list[str]:
    """Lines binding `numpy_kernel` to the op's own NumPy kernel (ir/ops), for a kernel module's Python wrapper to
    fall back on (a case the compiled kernel leaves to it), ending with the blank lines before the wrapper."""
    return ["from graphgpt.ir.ops import get_op", "", f"numpy_kernel = get_op({op!r}).compute_into", "", ""]


def numpy_fallback(op: str, condition: str, entry: str, arguments: str, attrs: dict) -> list[str]:
    """The Python function a schedule calls: the compiled kernel where `condition` holds, else the op's NumPy
    kernel (ir/ops), whose order of summation the kernel follows only under that condition."""
    attributes = ", ".join(f"{name}={value!r}" for name, value in attrs.items())
    return [*numpy_kernel_line(op),
            f"def {op}({arguments}):",
            f"    if {condition}:",
            f"        {entry}({arguments})",
            "    else:",
            f"        numpy_kernel({arguments}, {attributes})"]


def row_loop(rank: int, parallel: bool, shape_of: str = "out", shape: str = "",
             width: str = "width") -> tuple[list[str], list[str]]:
    """Lines opening the loop over rows of arrays of `rank` (>= 1), and the index names of the leading axes.

    The lines end inside the loop body (indented 8 spaces; for rank 1 there is no loop: the body is indented 4 and
    the whole array is the one row). `width` names the last axis's length. The sizes are `shape_of`'s shape, or
    the tuple expression `shape` (`q.shape[:-1]`: a loop over the matrices of q, width its rows). A parallel loop
    (prange) finds each row's indices by division; a serial one counts them up from the last row's, as integer
    division per row cost a softmax over rows of 64 a sixth of its time (201 against 177 us, 8 x 4 x 64 rows).

    >>> print("\\n".join(row_loop(3, True)[0]))
        d0, d1, width = out.shape
        for row in prange(d0 * d1):
            i1 = row % d1
            i0 = row // d1
    >>> print("\\n".join(row_loop(3, False)[0]))
        d0, d1, width = out.shape
        i0, i1 = 0, -1
        for row in range(d0 * d1):
            i1 += 1
            if i1 == d1:
                i1 = 0
                i0 += 1
    """
    shape = shape or f"{shape_of}.shape"
    if rank == 1:
        return [f"    {width} = {shape}[0]"], []
    leading = [f"d{axis}" for axis in range(rank - 1)]
    indices = [f"i{axis}" for axis in range(rank - 1)]
    lines = [f"    {', '.join(leading)}, {width} = {shape}"]
    if rank == 2:
        return lines + [f"    for row in {'prange' if parallel else 'range'}(d0):", "        i0 = row"], indices
    if parallel:
        lines.append(f"    for row in prange({' * '.join(leading)}):")
        rest = "row"
        for axis in range(rank - 2, 0, -1):  # the last leading axis varies fastest (C order)
            lines.append(f"        i{axis} = {rest} % d{axis}")
            lines.append(f"        {'rest' if axis > 1 else 'i0'} = {rest} // d{axis}")
            rest = "rest"
        return lines, indices
    last = rank - 2
    lines += [f"    {', '.join(indices)} = {', '.join(['0'] * last + ['-1'])}",
              f"    for row in range({' * '.join(leading)}):",
              f"        i{last} += 1"]
    for axis in range(last, 0, -1):  # a carry from axis to the one before it, the last varying fastest (C order)
        indent = " " * (8 + 4 * (last - axis))
        lines += [f"{indent}if i{axis} == d{axis}:", f"{indent}    i{axis} = 0", f"{indent}    i{axis - 1} += 1"]
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


# A row's max, NaN aside (a NaN fails every comparison and is passed over): -inf for a row of NaN and -inf only.
# Four running maxima, each over every fourth element, then the larger of them: a max taken element after element
# is one chain of dependent comparisons, which LLVM does not vectorise (without no-NaN fast-math), and it made a
# softmax over 8 x 4 x 64 rows of 64 wait on it (interleaved medians, with the blocks of rows_with_peaks: 112 ->
# 74 us; 1024 rows of 99, 128 -> 90 us). Where equal maxima of opposite signs (0.0 and -0.0) both occur, either
# may come back: x - max is the same number for every x but a zero, whose exp is 1 either way.
ROW_MAX = '''{decorator}
def row_max(v):
    m0 = m1 = m2 = m3 = v.dtype.type(-np.inf)
    length = v.shape[0]
    whole = length - length % 4
    for j in range(0, whole, 4):
        a, b, c, d = v[j], v[j + 1], v[j + 2], v[j + 3]
        m0 = a if a > m0 else m0
        m1 = b if b > m1 else m1
        m2 = c if c > m2 else m2
        m3 = d if d > m3 else m3
    for j in range(whole, length):
        a = v[j]
        m0 = a if a > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0'''


# float32 exp and tanh from float32 arithmetic and bit operations only, so that LLVM vectorises the loops calling
# them (16 lanes): the C library's expf and tanhf are scalar calls, which made a GELU over 256K elements 17x slower
# than NumPy's SIMD tanh. They are Cephes's expf and tanhf (S. Moshier), written branch-free: exp as 2^n e^r with
# x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts, Cody and Waite), e^r = 1 + r + r^2 P(r) with P of degree 5,
# and 2^n made from its exponent bits in two factors, so that results down to the subnormals come out; tanh as
# 1 - 2 / (e^2|x| + 1) from |x| = 0.625 on, an odd polynomial of degree 11 below. Measured over every float32
# input (benchmarks/float32_functions.py; tests/test_numba_kernels.py checks a dense sample of each binade): exp
# within 1.01 ULP of the exact value and tanh within 1.33, where NumPy's own SIMD functions are within 2.54 and
# 1.37 (so the two sides are within LIBRARY_ULP_GAP = 5 ULP of each other). Per call over 256K elements: exp 90
# us against NumPy's 140, tanh 180 against 105 (its exp, division and polynomial all computed, then one chosen).
# NaN, infinities, zeros of either sign and tiny inputs (where tanh x rounds to x) are passed through or clamped as
# the functions require. (Before, both were computed in float64 and rounded once: within half a ULP, but exp took
# 5x as long as NumPy's.)
BIT_CAST_IMPORT = "from graphgpt.passes.numba_backend.bit_casts import float32_from_bits"

EXP_FLOAT32 = '''{decorator}
def exp32(x):
    # below -104 exp rounds to 0 (NaN is returned at the end): computed from 0 instead, as a result built from
    # subnormal products takes the CPU's slow path (masked attention scores are -inf: softmax ran 1.5x slower)
    zero = not x >= np.float32(-104.0)
    v = np.float32(0.0) if zero else (np.float32(89.0) if x > np.float32(89.0) else x)
    n = np.floor(v * np.float32(1.4426950408889634) + np.float32(0.5))
    r = v - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = ((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
          + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    k = np.int32(n)  # in [-150, 128]: 2^k as two normal factors, 2^(k >> 1) 2^(k - (k >> 1))
    half = k >> np.int32(1)
    low = float32_from_bits((half + np.int32(127)) << np.int32(23))
    high = float32_from_bits((k - half + np.int32(127)) << np.int32(23))
    return x if x != x else (np.float32(0.0) if zero else (p * low) * high)'''

TANH_FLOAT32 = '''{decorator}
def tanh32(x):
    a = -x if x < np.float32(0.0) else x
    a = np.float32(10.0) if not a <= np.float32(10.0) else a  # tanh rounds to 1 from 9.01; NaN: x is returned
    large = np.float32(1.0) - np.float32(2.0) / (exp32(a + a) + np.float32(1.0))
    large = large if x > np.float32(0.0) else -large
    z = x * x
    small = ((((np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
               - np.float32(5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
             - np.float32(3.33332819422e-1)) * z * x + x
    t = large if a >= np.float32(0.625) else small
    # below 2^-12, tanh x rounds to x (keeping -0.0); NaN fails the comparison and is returned
    return t if abs(x) >= np.float32(0.000244140625) else x'''


def library_calls(dtype: str, functions) -> bool:
    """Whether computing `functions` ("exp", "tanh", "log", "pow") per element in `dtype` calls the C library's
    scalar functions (log and pow always, exp and tanh but in float32), which NumPy's SIMD versions outrun on
    large arrays by more than one pass over memory saves."""
    functions = set(functions)
    return bool(functions & {"log", "pow"} or (dtype != "float32" and functions & {"exp", "tanh"}))


def exp_call(argument: str, dtype: str) -> str:
    """exp of `argument`: the vectorisable exp32 in float32 (its module must include float32_helpers), the C
    library's in float64."""
    return f"exp32({argument})" if dtype == "float32" else f"np.exp({argument})"


def tanh_call(argument: str, dtype: str) -> str:
    """tanh of `argument`, as exp_call."""
    return f"tanh32({argument})" if dtype == "float32" else f"np.tanh({argument})"


# The helpers, each with its @njit line: the sums reassociating (never parallel: they run inside a row of a kernel's
# loop); the max exact, as written; exp32 contracting; tanh32, which calls exp32, inlined into its caller (with the
# caller's flags: no contract, as measured): LLVM left it a scalar call inside the caller's loop, making GELU 10x
# slower.
HELPERS = {"row_sum": (ROW_SUM, dict(reassociate=True)),
           "row_sum_of_products": (ROW_SUM_OF_PRODUCTS, dict(reassociate=True)),
           "row_sum_of_triple_products": (ROW_SUM_OF_TRIPLE_PRODUCTS, dict(reassociate=True)),
           "row_max": (ROW_MAX, dict()),
           "exp32": (EXP_FLOAT32, dict(contract=True)),
           "tanh32": (TANH_FLOAT32, dict(inline=True))}


def helper_module_text() -> str:
    """The module defining every helper, which kernel modules import from (helper_import): each helper is then
    compiled once per process and, through Numba's disk cache, once per machine, where a copy in every kernel's
    module was compiled again with each (1.75 s of the medium training step's cold compile, 17 kernels)."""
    title = ["the helpers generated kernels call: sums and maxima along a row, float32 exp and tanh (source_text.py)"]
    definitions = [template.format(decorator=decorator(False, **flags)) for template, flags in HELPERS.values()]
    return module_text(title, [BIT_CAST_IMPORT, *definitions[:-1]], definitions[-1].splitlines())


def helper_import(*names: str) -> list[str]:
    """The line importing these helpers into a kernel's module (its `helpers`), from the helper module by the
    name engine.load_kernel registers it under (named by a hash of its text, as every kernel module is)."""
    unknown = set(names) - set(HELPERS)
    if unknown:
        raise ValueError(f"no kernel helpers named {sorted(unknown)}; known: {sorted(HELPERS)}")
    return [f"from {HELPER_MODULE} import {', '.join(names)}"]


def float32_helpers(dtype: str, *functions: str) -> list[str]:
    """The import of the helper functions exp_call and tanh_call need in `dtype`, for `functions` ("exp",
    "tanh")."""
    if dtype != "float32" or not functions:
        return []
    return helper_import("exp32", *(["tanh32"] if "tanh" in functions else []))


def reductions(*names: str) -> list[str]:
    """The import of these reduction helpers ("row_sum", "row_sum_of_products", "row_sum_of_triple_products",
    "row_max")."""
    return helper_import(*names)


# The helper module's name, made known to engine.load_kernel once (a registry of sources, like its table of
# imported kernels).
HELPER_MODULE = register_module(helper_module_text())
