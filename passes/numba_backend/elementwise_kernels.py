"""Generated kernels for the elementwise ops: GELU, its gradient, and the fused elementwise programs the
fuse_elementwise pass makes (ir/ops/fused.py), each one loop that reads every input element once and writes the
output once, its intermediates held in registers.

Each element goes through the very operations of the NumPy kernel, in the same order and dtype (a Python float
constant rounded to the dtype as NumPy 2 rounds it), so arithmetic (+ - * / sqrt, maximum, negation) gives the
same bits. exp, log, tanh and pow are computed otherwise than by NumPy's own SIMD versions (in float32 exp and
tanh by source_text's own, the rest by the C library), so they may differ in the last bits.

Inputs broadcast as NumPy broadcasts them: an input of lower rank is read with the trailing indices, an axis of
length 1 at index 0. Which axes broadcast is written into the source; sizes are read at run time.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from graphgpt.ir import Node, TensorType
from graphgpt.ir.ops.elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI

from .source_text import (KernelSource, body_indent, decorator, float_literal, module_text, row_loop, row_view,
                          exp_call, float32_helpers, library_calls, tanh_call)

# The ops a fused program may hold (OpDef.fusible), as an expression of their operands' scalars.
UNARY_EXPRESSIONS = {"neg": "-{0}", "exp": "{exp}", "log": "np.log({0})", "tanh": "{tanh}",
                     "sqrt": "np.sqrt({0})"}
BINARY_EXPRESSIONS = {"add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
                      "pow": "np.power({0}, {1})",
                      # np.maximum: NaN if either is NaN, and the second operand when they compare equal (so
                      # maximum(-0.0, 0.0) is 0.0 and maximum(0.0, -0.0) is -0.0, as NumPy gives them)
                      "maximum": "{0} if {0} > {1} or {0} != {0} else {1}"}

# body(scalar names of the inputs, indent) -> lines ending with the output element in `result`
Body = Callable[[Sequence[str], str], list[str]]


def _threads(parallel: bool) -> str:
    return "rows in parallel (prange)" if parallel else "one thread"


def _elementwise_kernel(entry: str, out: TensorType, inputs: Sequence[TensorType], parallel: bool,
                        body: Body, inline: bool = False) -> list[str]:
    """The kernel function `entry(out, a0, a1, ...)`: each output element computed by `body` from its inputs'
    elements, broadcast as NumPy broadcasts them. `inline`: compiled into the kernels calling it (written_over)."""
    names = [f"a{k}" for k in range(len(inputs))]
    scalars = [f"x{k}" for k in range(len(inputs))]
    header = [decorator(parallel and len(out.shape) > 1, inline=inline), f"def {entry}(out, {', '.join(names)}):"]
    if not out.shape:  # a 0-d output: one element, and every input is 0-d too
        return [*header, *(f"    {scalar} = {name}[()]" for scalar, name in zip(scalars, names)),
                *body(scalars, "    "), "    out[()] = result"]
    rank, shape = len(out.shape), out.shape
    hoisted, per_row, per_element = [], [], []
    loop, indices = row_loop(rank, parallel)
    for name, scalar, type in zip(names, scalars, inputs):
        if not type.shape:  # a 0-d input: one value for the whole call
            hoisted.append(f"    {scalar} = {name}[()]")
            continue
        offset = rank - len(type.shape)
        leading = ["0" if type.shape[axis] == 1 and shape[axis + offset] != 1 else indices[axis + offset]
                   for axis in range(len(type.shape) - 1)]
        per_row.append(f"{name}_row = {row_view(name, leading)}")
        if type.shape[-1] == 1 and shape[-1] != 1:  # broadcast along the row: one value per row
            per_row.append(f"{scalar} = {name}_row[0]")
        else:
            per_element.append(f"{scalar} = {name}_row[j]")
    indent = body_indent(rank)
    return [*header, *hoisted, *loop,
            *(indent + line for line in [f"out_row = {row_view('out', indices)}", *per_row]),
            f"{indent}for j in range(width):",
            *(f"{indent}    {line}" for line in per_element),
            *body(scalars, indent + "    "),
            f"{indent}    out_row[j] = result"]


def written_over(out: TensorType, inputs: Sequence[TensorType]) -> tuple[int, ...]:
    """The inputs the memory plan may write the output over (passes/memory_plan.py: an input of its type)."""
    return tuple(k for k, type in enumerate(inputs) if type == out)


def _written_over_entries(entry: str, out: TensorType, inputs: Sequence[TensorType], parallel: bool) -> list[str]:
    """For each input k the output may be written over, a kernel `{entry}_over_a{k}(out, a0, ...)` for when it is:
    it calls `entry` (inlined) with a{k} as the output too. Given two arrays, LLVM checks at run time that the
    output does not overlap the inputs and runs its scalar loop when it does: the memory plan's in-place writes
    made those kernels 2-8x slower (Adam's update over 117K elements 390 against 50 us). Given one array read and
    written at the same index, it knows the loop is safe to vectorise."""
    names = ", ".join(f"a{k}" for k in range(len(inputs)))
    lines = []
    for k in written_over(out, inputs):
        lines += ["", "", decorator(parallel and len(out.shape) > 1), f"def {entry}_over_a{k}(out, {names}):",
                  f"    # out is a{k}'s memory", f"    {entry}(a{k}, {names})"]
    return lines


# The smallest output a lone elementwise node (add, mul, ...: not fused with others) that broadcasts an input
# along some axis gets a kernel for. NumPy's broadcasting loops are slower than one generated loop: a bias add
# over 8 x 64 x 256 ran 26.9 us in NumPy against 15.8 in the kernel, over 8 x 64 x 64 8.0 against 3.9 (medians of
# 300 calls). Without a broadcast axis NumPy's flat SIMD loop is as fast or faster (same shapes 4.1 against 4.7
# us, times a scalar 12.1 against 21.3 over 8 x 4 x 64 x 64: the kernel walks rows), so those keep NumPy; below
# this size a NumPy call costs no more than a kernel's.
LONE_OP_MIN_ELEMENTS = 1 << 14


def fused_elementwise_source(node: Node, parallel: bool) -> Optional[KernelSource]:
    """The program of a fused_elementwise node as one loop; None if it holds an op this backend does not know."""
    return _program_source(node.attrs["program"], node, parallel)


def lone_elementwise_source(node: Node, parallel: bool) -> Optional[KernelSource]:
    """A single elementwise op (add, sub, mul, div, maximum, ...) over at least LONE_OP_MIN_ELEMENTS elements with
    an input broadcast along some axis (a bias), as a one-instruction program; None otherwise, or for an op this
    backend does not know."""
    out = node.output.type
    if out.size < LONE_OP_MIN_ELEMENTS or all(value.type.shape in (out.shape, ()) for value in node.inputs):
        return None
    return _program_source(((node.op, tuple(range(len(node.inputs)))),), node, parallel)


def _program_source(program, node: Node, parallel: bool) -> Optional[KernelSource]:
    """A fused program's kernel over the node's inputs and output: one loop."""
    if any(op not in UNARY_EXPRESSIONS and op not in BINARY_EXPRESSIONS for op, _ in program):
        return None
    inputs = [value.type for value in node.inputs]
    out = node.output.type

    def body(scalars: Sequence[str], indent: str) -> list[str]:
        names = list(scalars)
        lines = []
        for position, (op, operands) in enumerate(program):
            arguments = [names[o] for o in operands]
            template = UNARY_EXPRESSIONS.get(op) or BINARY_EXPRESSIONS[op]
            expression = template.format(*arguments, exp=exp_call(arguments[0], out.dtype),
                                         tanh=tanh_call(arguments[0], out.dtype))
            names.append("result" if position == len(program) - 1 else f"t{position}")
            lines.append(f"{indent}{names[-1]} = {expression}  # {op}")
        return lines

    title = [f"fused_elementwise: {out.dtype}, rank {len(out.shape)}, {_threads(parallel)}",
             f"program: {' -> '.join(op for op, _ in program)}",
             f"out {_broadcast_pattern(out)}, inputs "
             + ", ".join(f"a{k} {_broadcast_pattern(type)}" for k, type in enumerate(inputs))
             + " (_ any size, 1 a size-1 axis)"]
    kernel = [*_elementwise_kernel("fused_elementwise", out, inputs, parallel, body, inline=True),
              *_written_over_entries("fused_elementwise", out, inputs, parallel)]
    ops = {op for op, _ in program}
    helpers = float32_helpers(out.dtype, *(ops & {"exp", "tanh"}))
    return KernelSource("fused_elementwise", "fused_elementwise", module_text(title, helpers, kernel),
                        small_only=library_calls(out.dtype, ops), written_over=written_over(out, inputs))


def _broadcast_pattern(type: TensorType) -> str:
    """`f32[_,1,_]`: a type as the kernel sees it, its sizes left open except the axes of length 1 (which
    broadcast): the source depends on those only, so every size shares it."""
    return f"{str(type).split('[')[0]}[{','.join('1' if size == 1 else '_' for size in type.shape)}]"


def gelu_source(node: Node, parallel: bool) -> KernelSource:
    """x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3))), operation for operation as ir/ops/elementwise.py gelu_into
    computes it."""
    out = node.output.type
    dtype = out.dtype

    def body(scalars: Sequence[str], indent: str) -> list[str]:
        x = scalars[0]
        lines = [f"result = {x} * {x}",
                 f"result = result * {x}",
                 f"result = result * {float_literal(GELU_CUBIC, dtype)}",
                 f"result = result + {x}",
                 f"result = result * {float_literal(-2.0 * GELU_SQRT_2_OVER_PI, dtype)}  # -2u",
                 f"result = {exp_call('result', dtype)}",
                 f"result = result + {float_literal(1.0, dtype)}",
                 f"result = {x} / result"]
        return [indent + line for line in lines]

    title = [f"gelu: {dtype}, rank {len(out.shape)}, {_threads(parallel)}",
             "x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3), as ir/ops/elementwise.py gelu_into computes it"]
    kernel = _elementwise_kernel("gelu", out, [out], parallel, body)
    return KernelSource("gelu", "gelu", module_text(title, float32_helpers(dtype, "exp"), kernel),
                        small_only=library_calls(dtype, {"exp"}))


def gelu_grad_source(node: Node, parallel: bool) -> KernelSource:
    """g times the derivative of gelu at x, operation for operation as ir/ops/gradients.py computes it: with
    e = exp(-2u) and s = 1 / (1 + e), s + (2c (1 + 3k x^2)) (s (1 - s)) x, 1 - s taken as min(e, largest) s."""
    out = node.output.type
    dtype = out.dtype
    c, k = GELU_SQRT_2_OVER_PI, GELU_CUBIC
    largest = float(np.finfo(dtype).max)

    def body(scalars: Sequence[str], indent: str) -> list[str]:
        g, x = scalars
        lines = [f"square = {x} * {x}",
                 f"e = square * {float_literal(-2.0 * c * k, dtype)}",
                 f"e = e - {float_literal(2.0 * c, dtype)}",
                 f"e = e * {x}  # -2u",
                 f"e = {exp_call('e', dtype)}",
                 f"s = e + {float_literal(1.0, dtype)}",
                 f"s = {float_literal(1.0, dtype)} / s",
                 f"e = {float_literal(largest, dtype)} if e > {float_literal(largest, dtype)} else e  # np.minimum",
                 "e = e * s  # 1 - s",
                 "e = e * s  # s (1 - s)",
                 f"square = square * {float_literal(6.0 * c * k, dtype)}",
                 f"square = square + {float_literal(2.0 * c, dtype)}  # 2u'",
                 "square = square * e",
                 f"square = square * {x}",
                 "result = s + square",
                 f"result = result * {g}"]
        return [indent + line for line in lines]

    title = [f"gelu_grad: {dtype}, rank {len(out.shape)}, {_threads(parallel)}",
             "g (s + 2c (1 + 3k x^2) s (1 - s) x), s = 1 / (1 + e), e = exp(-2c (x + k x^3)),",
             "1 - s = min(e, largest) s, as ir/ops/gradients.py computes it"]
    kernel = _elementwise_kernel("gelu_grad", out, [out, out], parallel, body)
    return KernelSource("gelu_grad", "gelu_grad", module_text(title, float32_helpers(dtype, "exp"), kernel),
                        small_only=library_calls(dtype, {"exp"}))
