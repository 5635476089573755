"""Algebraic simplification: a table of local rewrite rules, each small and named for what it removes.

    x * 1, 1 * x, x / 1, x + 0, 0 + x, x - 0   ->  x        (only where no broadcast changes the shape or dtype)
    -(-x)                                      ->  x
    transpose(transpose(x))                    ->  one transpose, or x when the two cancel
    reshape(reshape(x)), reshape to own shape  ->  one reshape, or x
    x ** 2, x ** 3, x ** 4 (float, constant)   ->  x * x, x * x * x, (x * x) * (x * x)
    x ** 1, x ** 0.5                           ->  x, sqrt(x)
    (x * c1) * c2                              ->  x * (c1 * c2)   (constant folding then merges c1 * c2)
    (B, T, k) @ (k, n)                         ->  reshape((B*T, k) @ (k, n))   (one GEMM instead of B)

Float `pow` with a small integer exponent is worth the rewrite: on this machine float32 z**3 is ~60x slower
than z*z*z.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from graphgpt.ir import Graph, Value, get_op
from graphgpt.ir.ops import ViewLayout

from .result import PassResult
from .rewrite import RewriteContext, rewrite_nodes


def _is_constant(value: Value, context: RewriteContext, number: float) -> bool:
    array = context.constant_value(value)
    return array is not None and bool(np.all(array == number))


def _same_type(node, value: Value) -> Optional[Value]:
    return value if value.type == node.output.type else None


def drop_identity_arithmetic(node, inputs, context) -> Optional[Value]:
    """x*1, 1*x, x/1, x+0, 0+x, x-0."""
    if node.op in ("mul", "add"):
        neutral = 1 if node.op == "mul" else 0
        for this, other in ((inputs[0], inputs[1]), (inputs[1], inputs[0])):
            if _is_constant(other, context, neutral) and _same_type(node, this):
                return this
    if node.op in ("div", "sub"):
        neutral = 1 if node.op == "div" else 0
        if _is_constant(inputs[1], context, neutral):
            return _same_type(node, inputs[0])
    return None


def cancel_double_negation(node, inputs, context) -> Optional[Value]:
    producer = inputs[0].producer if node.op == "neg" else None
    return producer.inputs[0] if producer is not None and producer.op == "neg" else None


def merge_transposes(node, inputs, context) -> Optional[Value]:
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


def merge_reshapes(node, inputs, context) -> Optional[Value]:
    if node.op != "reshape":
        return None
    source, producer = inputs[0], inputs[0].producer
    if producer is not None and producer.op == "reshape":
        source = producer.inputs[0]
    if source.shape == node.output.shape:
        return source
    if source is inputs[0]:
        return None
    return context.emit("reshape", [source], {"shape": node.attrs["shape"]})


def strength_reduce_power(node, inputs, context) -> Optional[Value]:
    if node.op != "pow":
        return None
    exponent = context.constant_value(inputs[1])
    base = inputs[0]
    if exponent is None or exponent.size != 1 or base.type != node.output.type:
        return None
    power = float(exponent.reshape(()))
    if power == 1:
        return base
    if power == 0.5:
        return context.emit("sqrt", [base])
    if power in (2, 3, 4):
        square = context.emit("mul", [base, base])
        if power == 2:
            return square
        return context.emit("mul", [square, base] if power == 3 else [square, square])
    return None


def combine_constant_scales(node, inputs, context) -> Optional[Value]:
    """(x * c1) * c2 -> x * (c1 * c2) for scalar constants, so one multiply remains after folding."""
    if node.op != "mul" or context.constant_value(inputs[1]) is None or inputs[1].shape != ():
        return None
    producer = inputs[0].producer
    if producer is None or producer.op != "mul" or producer.inputs[0].type != node.output.type:
        return None
    inner_constant = producer.inputs[1]
    if context.constant_value(inner_constant) is None or inner_constant.shape != ():
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
    leading_rows = int(np.prod(inputs[0].shape[:-1], dtype=np.int64))
    rows = context.emit("reshape", [inputs[0]], {"shape": (leading_rows, inputs[0].shape[-1])})
    product = context.emit("matmul", [rows, inputs[1]])
    return context.emit("reshape", [product], {"shape": node.output.shape})


RULES = [drop_identity_arithmetic, cancel_double_negation, merge_transposes, merge_reshapes,
         strength_reduce_power, combine_constant_scales, flatten_batched_matmul]


def simplify(graph: Graph) -> PassResult:
    """Apply the algebraic rules (one sweep; the pass manager repeats passes until nothing changes)."""
    new_graph, fired = rewrite_nodes(graph, RULES, header="simplify")
    return PassResult(new_graph, {rule.__name__.replace("_", " "): fired[rule.__name__] for rule in RULES})
