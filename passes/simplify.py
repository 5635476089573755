"""Algebraic simplification: a table of local rewrite rules, each small and named for what it removes.

By default every rewrite gives bit-identical results for every input (-0.0, infinities, NaN, overflow and
subnormals included, and the layout a later matmul or reduction reads, which decides how it rounds). A rewrite
that may change a value is made only where the graph proves it exact, or when a fast-math flag allows it
(`fast_math`, passes/manager.py FAST_MATH_FLAGS):

    x * 1, 1 * x, x / 1, x - (+0.0), x + (-0.0)  ->  x   exact (where no broadcast changes the type, x is laid
                                                          out as the node's result, C order)
    x + (+0.0), x - (-0.0)                       ->  x   exact where x is never -0.0; else no_signed_zeros
                                                          (-0.0 + 0.0 is +0.0)
    -(-x)                                        ->  x   exact (x in C order, as above)
    transpose(transpose(x))                      ->  one transpose, or x: exact (the same view)
    reshape(reshape(x)), reshape to own shape    ->  one reshape, or x: exact for x in C order (else the two
                                                          may differ in layout)
    concat(x[a:b], x[b:c]) along axis 0          ->  x[a:c], or x: exact for x in C order, slices of whole rows
                                                          (each flattened: x[a:c] flattened)
    x ** 1, x ** 2                               ->  x, x * x: exact (pow(x, 2) correctly rounded is x * x)
    x ** 0.5                                     ->  sqrt(x): exact where x is never negative; else
                                                          no_signed_zeros and no_infinities (pow(-0.0, 0.5) is
                                                          +0.0, pow(-inf, 0.5) is +inf; sqrt gives -0.0, NaN)
    x ** 3, x ** 4                               ->  x * x * x, (x * x) * (x * x): approximate_functions (each
                                                          multiply rounds; pow rounds once)
    (x * c1) * c2                                ->  x * (c1 * c2): exact for integers and for powers of two
                                                          of magnitude >= 1; else reassociate ((x * 1e20) *
                                                          1e-20 overflows, x * 1.0 does not)
    (B, T, k) @ (k, n)                           ->  reshape((B*T, k) @ (k, n)): exact for a C-ordered left
                                                          operand (the matmul kernel runs that one GEMM itself);
                                                          else reassociate (NumPy's loop of B GEMMs rounds
                                                          otherwise)

Float `pow` with a small integer exponent was the reason for the power rules: float32 z**3 is ~60x slower than
z*z*z here. NumPy's pow squares for a scalar exponent of 2 and takes sqrt for 0.5 itself, as fast as the
rewrites, so leaving x ** 0.5 a pow costs nothing; x ** 3 and x ** 4 stay slow without approximate_functions (the
GPT has neither: GELU is one op, with z*z*z inside its kernel).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import numpy as np

from graphgpt.ir import Graph, Value, get_op
from graphgpt.ir.dims import same_shape, same_size
from graphgpt.ir.ops import ViewLayout

from .result import PassResult
from .rewrite import RewriteContext, rewrite_nodes

# The fast-math flags of one run (passes/manager.py FAST_MATH_FLAGS names them); empty: every rewrite exact.
FastMath = frozenset


def _in_c_order(value: Value) -> bool:
    """Whether the schedule (and eager execution) hold `value` as a C-ordered array: graph inputs and parameters
    (the schedule's contract), computed values (planned buffers), constants stored so, and reshapes of those.

    A rule replacing a computed node by an existing value must keep the layout the node's readers see: BLAS and
    NumPy's reductions round differently for a transposed or sliced operand than for a C-ordered one."""
    producer = value.producer
    while producer is not None and (get_op(producer.op).view is ViewLayout.RESHAPE  # a view of C order is C order
                                    or (producer.op == "slice" and _rows_in_order(producer.attrs["slices"],
                                                                                  producer.inputs[0].shape))):
        producer = producer.inputs[0].producer
    if producer is None:
        return True
    if producer.op == "constant":
        return producer.attrs["value"].flags.c_contiguous
    return not get_op(producer.op).view


def _whole(triple, extent) -> bool:
    start, stop, step = triple
    return same_size(start, 0) and same_size(stop, extent) and step == 1


def _rows_in_order(slices, shape) -> bool:
    """Whether a slice takes consecutive rows (axis 0, step 1) and every other axis whole: of a C-ordered array,
    such a slice is C-ordered itself (the rows of a joined gradient vector, say)."""
    return not slices or (slices[0][2] == 1 and all(map(_whole, slices[1:], shape[1:])))


# Ops whose result is never negative (nor -0.0, nor -inf) whatever their inputs: exp(-inf) is +0.0.
NEVER_NEGATIVE_OPS = {"exp", "softmax"}
# Ops whose result is never negative when no input is: sums, products, quotients and maxima of such numbers, their
# square roots (sqrt(-0.0) is -0.0, so not of any input), and views of them. NaN may appear (0 / 0): it is NaN
# either way, so it never tells a rewrite apart.
KEEPS_NON_NEGATIVE_OPS = {"add", "mul", "div", "maximum", "sqrt", "sum", "mean", "max", "concat",
                          "reshape", "transpose", "slice", "broadcast_to"}


def _never_negative(value: Value, depth: int = 8) -> bool:
    """Whether every element of `value` is +0.0, positive, +inf or NaN, as the graph proves it (looking back at
    most `depth` nodes): never -0.0 and never -inf."""
    producer = value.producer
    if producer is None or depth == 0:
        return False
    if producer.op == "constant":
        array = producer.attrs["value"]
        return array.dtype.kind == "f" and not bool(np.any(np.signbit(array) & ~np.isnan(array)))
    if producer.op in NEVER_NEGATIVE_OPS or (producer.op == "mul" and producer.inputs[0] is producer.inputs[1]):
        return True  # ... and x * x, (-0.0) * (-0.0) being +0.0
    return producer.op in KEEPS_NON_NEGATIVE_OPS and all(_never_negative(input_value, depth - 1)
                                                          for input_value in producer.inputs)


def _is_identity_operand(constant: np.ndarray, op: str) -> bool:
    """Whether `x op constant` is x for every x, bit for bit. In IEEE arithmetic -0.0 + -0.0 is -0.0 but
    -0.0 + +0.0 is +0.0: so x + (-0.0) and x - (+0.0) keep every x, while x + (+0.0) and x - (-0.0) turn -0.0
    into +0.0 (1 / (x + 0.0) at x = -0.0 is +inf, 1 / x is -inf). x * 1 and x / 1 keep every x, NaN included."""
    if op in ("mul", "div"):
        return bool(np.all(constant == 1))
    if not np.all(constant == 0):
        return False
    if constant.dtype.kind != "f":  # integers have one zero
        return True
    negative = np.signbit(constant)
    return bool(np.all(negative)) if op == "add" else not bool(np.any(negative))


def drop_identity_arithmetic(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """x*1, 1*x, x/1, x-(+0.0), x+(-0.0), (-0.0)+x -> x; also x+(+0.0) and x-(-0.0) where x is never -0.0 or with
    no_signed_zeros. Only where x has the node's type (no broadcast) and layout (C order)."""
    if node.op not in ("mul", "add", "div", "sub"):
        return None
    commutes = node.op in ("mul", "add")
    for kept, other in ((inputs[0], inputs[1]), (inputs[1], inputs[0]))[:2 if commutes else 1]:
        constant = context.constant_value(other)
        if constant is None or kept.type != node.output.type or not _in_c_order(kept):
            continue
        if _is_identity_operand(constant, node.op):
            return kept
        # x + (+0.0) and x - (-0.0) differ from x only at x = -0.0
        if (node.op in ("add", "sub") and np.all(constant == 0)
                and ("no_signed_zeros" in fast_math or _never_negative(kept))):
            return kept
    return None


def cancel_double_negation(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """-(-x) -> x: exact (negation flips the sign bit; twice gives x back, -0.0 and NaN included)."""
    producer = inputs[0].producer if node.op == "neg" else None
    if producer is None or producer.op != "neg" or not _in_c_order(producer.inputs[0]):
        return None
    return producer.inputs[0]


def merge_transposes(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """transpose(transpose(x)) -> one transpose, or x when they cancel: exact, and the very view the two made."""
    if node.op != "transpose":
        return None
    perm = node.attrs["perm"]
    source, producer = inputs[0], inputs[0].producer
    if producer is not None and producer.op == "transpose":
        inner = producer.attrs["perm"]
        perm = tuple(inner[axis] for axis in perm)  # out[i] = x[inner[perm[i]]]
        source = producer.inputs[0]
    if perm == tuple(range(len(perm))):
        return source
    if source is inputs[0]:
        return None
    return context.emit("transpose", [source], {"perm": perm})


def merge_reshapes(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """reshape(reshape(x)) -> one reshape, or x; a reshape to x's own shape -> x (NumPy's view of x, x's strides).

    Merged only for x in C order, where every reshape is a C-ordered view. Of a transposed x, the inner reshape
    may copy into C order while one reshape to the final shape is a view in x's order: the same values, laid out
    differently for a later matmul or reduction."""
    if node.op != "reshape":
        return None
    source, producer = inputs[0], inputs[0].producer
    if producer is not None and producer.op == "reshape" and _in_c_order(producer.inputs[0]):
        source = producer.inputs[0]
    if same_shape(source.shape, node.output.shape):
        return source
    if source is inputs[0]:
        return None
    return context.emit("reshape", [source], {"shape": node.attrs["shape"]})


def _row_slice(value: Value, flattened: bool):
    """The slice node making `value` (through a reshape to one axis, if `flattened`), or None."""
    producer = value.producer
    if flattened:
        if producer is None or producer.op != "reshape" or producer.output.type.rank != 1:
            return None
        producer = producer.inputs[0].producer
    return producer if producer is not None and producer.op == "slice" else None


def join_adjacent_slices(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """concat(x[a:b], x[b:c], ...) along axis 0 -> x[a:c], or x itself when the slices cover it; the same for the
    slices each flattened to one axis (-> x[a:c] flattened). Exact (the same elements), for C-ordered x and slices
    of consecutive rows (the concat's result is C-ordered, and so is such a slice). A gradient vector cut into its
    parameters' gradients and joined again for the optimizer's update is the vector itself."""
    if node.op != "concat" or node.attrs["axis"] != 0:
        return None
    flattened = node.output.type.rank == 1 and inputs[0].producer is not None and inputs[0].producer.op == "reshape"
    producers = [_row_slice(value, flattened) for value in inputs]
    if any(producer is None for producer in producers):
        return None
    source = producers[0].inputs[0]
    if (source.type.rank == 0 or any(producer.inputs[0] is not source for producer in producers)
            or not _in_c_order(source)):
        return None
    rows = [producer.attrs["slices"] for producer in producers]
    if not all(_rows_in_order(slices, source.shape) for slices in rows) or not all(
            same_size(before[0][1], after[0][0]) for before, after in zip(rows, rows[1:])):
        return None
    joined = ((rows[0][0][0], rows[-1][0][1], 1),) + tuple(rows[0][1:])
    result = source if all(map(_whole, joined, source.shape)) else context.emit("slice", [source], {"slices": joined})
    if flattened and result.type.rank != 1:
        return context.emit("reshape", [result], {"shape": (result.type.size,)})
    return result


def strength_reduce_power(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """x ** c for a constant c: 1 -> x and 2 -> x * x (exact: pow(x, 2) correctly rounded is the one rounding of
    x * x, -0.0, inf and NaN included, and NumPy's pow squares so itself); 0.5 -> sqrt(x) where x is never
    negative, or with no_signed_zeros and no_infinities; 3 and 4 -> multiplies with approximate_functions."""
    if node.op != "pow":
        return None
    exponent = context.constant_value(inputs[1])
    base = inputs[0]
    if exponent is None or exponent.size != 1 or base.type != node.output.type:
        return None
    power = float(exponent.reshape(()))
    if power == 1:
        return base if _in_c_order(base) else None
    if power == 2:
        return context.emit("mul", [base, base])
    if power == 0.5 and (_never_negative(base) or {"no_signed_zeros", "no_infinities"} <= fast_math):
        # IEEE pow(-0.0, 0.5) is +0.0 and pow(-inf, 0.5) is +inf, where sqrt gives -0.0 and NaN. (NumPy's pow
        # itself takes sqrt for a scalar 0.5; the graph's pow promises pow, not NumPy's shortcut.)
        return context.emit("sqrt", [base])
    if power in (3, 4) and "approximate_functions" in fast_math:
        # Two or three roundings instead of pow's one: up to ~1.5 ulp apart.
        square = context.emit("mul", [base, base])
        return context.emit("mul", [square, base] if power == 3 else [square, square])
    return None


def _scales_combine_exactly(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether (x * first) * second is x * (first * second) for every x. Integers: their wrapping products
    associate. Floats: when both are powers of two of magnitude at least 1 and their product is finite, x * first
    is exact unless it overflows, and then x * (first * second) overflows too. Any other pair may differ:
    (x * 1e20) * 1e-20 overflows where x * 1.0 does not, and x * 0.5 may lose a subnormal's last bit."""
    if first.dtype.kind in "iu" and second.dtype.kind in "iu":
        return True
    with np.errstate(over="ignore"):
        product = first * second
    mantissas, exponents = np.frexp(np.abs(np.stack([first, second]).astype(np.float64)))
    return bool(np.all(mantissas == 0.5) and np.all(exponents >= 1) and np.isfinite(product))


def combine_constant_scales(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """(x * c1) * c2 -> x * (c1 * c2) for scalar constants, so one multiply remains after folding: where the
    two scales combine exactly, or with reassociate."""
    if node.op != "mul" or context.constant_value(inputs[1]) is None or inputs[1].shape != ():
        return None
    producer = inputs[0].producer
    if producer is None or producer.op != "mul" or producer.inputs[0].type != node.output.type:
        return None
    inner_constant = producer.inputs[1]
    if context.constant_value(inner_constant) is None or inner_constant.shape != ():
        return None
    if not ("reassociate" in fast_math
            or _scales_combine_exactly(context.constant_value(inner_constant), context.constant_value(inputs[1]))):
        return None
    scale = context.emit("mul", [inner_constant, inputs[1]])
    return context.emit("mul", [producer.inputs[0], scale])


def flatten_batched_matmul(node, inputs, context) -> Optional[Value]:
    """(B, T, k) @ (k, n) -> one (B*T, k) @ (k, n) GEMM: ~12% faster here than NumPy's loop of T-row GEMMs.
    Only for a left operand laid out contiguously, where the reshapes are free views."""
    if node.op != "matmul" or inputs[0].type.rank <= 2 or inputs[1].type.rank != 2:
        return None
    producer = inputs[0].producer
    if producer is not None and get_op(producer.op).view is ViewLayout.STRIDED:  # reshaping it to 2-D would copy
        return None
    # The row count from the leading axes, not size // inner: with inner == 0 that is no count at all.
    leading_rows = math.prod(inputs[0].shape[:-1])  # a symbolic size (B*T) stays one
    rows = context.emit("reshape", [inputs[0]], {"shape": (leading_rows, inputs[0].shape[-1])})
    product = context.emit("matmul", [rows, inputs[1]])
    return context.emit("reshape", [product], {"shape": node.output.shape})


@functools.wraps(flatten_batched_matmul, assigned=("__name__",))  # reported under the rewrite's name
def _flatten_batched_matmul_where_exact(node, inputs, context, fast_math: FastMath) -> Optional[Value]:
    """flatten_batched_matmul for a C-ordered left operand: the matmul kernel (ir/ops/matmul.py) then runs this
    very GEMM itself, so the rewrite only shows it in the graph (where fuse_horizontal_matmuls can join it).
    For another operand the kernel runs NumPy's loop of one GEMM per batch entry, which BLAS rounds unlike one
    GEMM over all rows (44 of 300 random shapes differ): then with reassociate."""
    if node.op != "matmul" or not (_in_c_order(inputs[0]) or "reassociate" in fast_math):
        return None
    return flatten_batched_matmul(node, inputs, context)


# Why a rewrite adds nodes on purpose, by the name a pass's summary reports it under: a node count that rises is
# read as the graph getting worse unless the report says why (passes/manager.py explain_node_count).
ADDS_NODES = {"flatten batched matmul": "each batched matmul becomes one 2-D matmul between two reshapes (free "
                                        "views), so one GEMM does the work of a loop of them"}

# Each rule: (node, its inputs in the new graph, context, the fast-math flags) -> replacement value or None.
RULES = [drop_identity_arithmetic, cancel_double_negation, merge_transposes, merge_reshapes, join_adjacent_slices,
         strength_reduce_power, combine_constant_scales, _flatten_batched_matmul_where_exact]


def simplify(graph: Graph, fast_math: FastMath = FastMath()) -> PassResult:
    """Apply the algebraic rules (one sweep; the pass manager repeats passes until nothing changes), making only
    exact rewrites unless `fast_math` flags allow others.

    >>> simplify(graph, fast_math=frozenset({"reassociate"}))  # doctest: +SKIP
    """

    def with_flags(rule: Callable) -> Callable:
        @functools.wraps(rule)
        def bound(node, inputs, context: RewriteContext) -> Optional[Value]:
            return rule(node, inputs, context, fast_math)

        return bound

    new_graph, fired = rewrite_nodes(graph, [with_flags(rule) for rule in RULES], header="simplify")
    return PassResult(new_graph, {rule.__name__.replace("_", " "): fired[rule.__name__] for rule in RULES})
