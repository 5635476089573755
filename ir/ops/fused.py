"""The fused elementwise op: a small program of single-ufunc ops over same-shaped (or broadcast) inputs, made by
the fuse_elementwise pass and run as one step.

It runs in cache-sized blocks: for each block of the output, every instruction computes its block into a small
scratch array (reused across blocks, so the chain's intermediates stay in cache instead of streaming whole
arrays through memory), and the last instruction writes the output block. The scratch comes from ir/scratch.py,
and the op declares how much it takes (the memory plan reserves it). Its gradient rule replays the program
with the op-building API and applies the chain rule to it, so a fused graph stays differentiable.
"""

from __future__ import annotations

import numpy as np

from ..chain_rule import Application, backpropagate
from ..errors import ShapeError
from ..liveness import last_reads
from ..scratch import Shape, scratch_arrays, scratch_nbytes
from . import attrs as A
from .registry import OPS, VARIADIC, OpKind, define_op

# Elements per block (512 KiB of float32). Measured on this 2-core machine (1 MiB L2 per core) for a 4-op chain
# over 1M elements: 8K blocks 2.9 ms, 32K 1.6 ms, 128K 1.1 ms, 1M 1.6 ms; separate ops into touched buffers
# 1.2 ms. Smaller blocks lose to Python dispatch per block, larger ones to cache misses.
BLOCK_ELEMENTS = 1 << 17


def _operand_types(program, input_types):
    types = list(input_types)
    for op, operands in program:
        if op not in OPS or not OPS[op].fusible:
            fusible = sorted(name for name, declared in OPS.items() if declared.fusible)
            raise ShapeError(f"op {op!r} cannot be fused (fusible: {fusible})")
        if any(not 0 <= operand < len(types) for operand in operands):
            raise ShapeError(f"instruction {op} reads operand {operands}, not defined before it")
        types.append(OPS[op].infer_type([types[operand] for operand in operands], {}))
    return types


def _infer_fused(*input_types, program):
    return _operand_types(program, input_types)[-1]


def _blocks(shape, limit):
    """Index tuples over the leading axes of `shape`, each covering at most ~limit elements."""
    if not shape:
        yield ()
        return
    inner = int(np.prod(shape[1:], dtype=np.int64))
    if inner <= limit or len(shape) == 1:
        rows = max(1, limit // max(inner, 1))
        for start in range(0, shape[0], rows):
            yield (slice(start, min(start + rows, shape[0])),)
    else:
        for index in range(shape[0]):
            for rest in _blocks(shape[1:], limit):
                yield (slice(index, index + 1),) + rest


def _scratch_plan(out_shape, program, num_inputs) -> tuple[list[int], list[Shape]]:
    """Where the program's intermediates live: for each instruction but the last (which writes the output
    block), the number of the scratch block it writes, and the flat scratch blocks to ask ir/scratch.py for, each
    of the largest output block's size. A scratch block is free again once the value it holds is read no more,
    so a chain needs as many as it has intermediates live at once. The kernel and the op's scratch declaration
    both read this, so they agree."""
    last = last_reads(operands for _, operands in program)
    free, holder, numbers, count = [], {}, [], 0  # holder: intermediate's operand number -> its scratch number
    for position, (_, operands) in enumerate(program[:-1]):
        if not free:
            free.append(count)
            count += 1
        numbers.append(free.pop())
        holder[num_inputs + position] = numbers[-1]
        for operand in set(operands):
            if operand in holder and last.get(operand) == position:
                free.append(holder.pop(operand))
    return numbers, [(_largest_block_elements(out_shape),)] * count


def _largest_block_elements(shape) -> int:
    """Elements of the largest block _blocks cuts `shape` into: the first, as along every axis only the last
    block is shorter (0 when there is no block: an empty leading axis)."""
    first = next(_blocks(shape, BLOCK_ELEMENTS), None)
    if first is None:
        return 0
    lengths = [len(range(*index.indices(length))) for index, length in zip(first, shape)]
    return int(np.prod(lengths + list(shape[len(first):]), dtype=np.int64))


def _fused_scratch(out, *inputs, program):
    return scratch_nbytes(_scratch_plan(out.shape, program, len(inputs))[1], out.numpy_dtype)


def _fused_into(out, *inputs, program):
    rank = out.ndim
    # Inputs padded to the output's rank (views), so a block index applies to each: size-1 axes broadcast.
    padded = [x.reshape((1,) * (rank - x.ndim) + x.shape) for x in inputs]
    numbers, shapes = _scratch_plan(out.shape, program, len(inputs))
    # Taken once per call and reused by every block, so the chain's intermediates stay in cache.
    scratch = scratch_arrays("fused_elementwise", shapes, out.dtype)
    output_position = len(program) - 1
    for block in _blocks(out.shape, BLOCK_ELEMENTS):
        if not block:  # a 0-d output: out[()] would be a scalar, out[...] is a writable 0-d view
            block_inputs, out_block = padded, out[...]
        else:
            block_inputs = [x[tuple(index if x.shape[axis] != 1 else slice(None)
                                    for axis, index in enumerate(block))] for x in padded]
            out_block = out[block]
        values = list(block_inputs)
        for position, (op, operands) in enumerate(program):
            arguments = [values[operand] for operand in operands]
            if position == output_position:
                target = out_block
            else:
                target = scratch[numbers[position]][:out_block.size].reshape(out_block.shape)
            OPS[op].compute_into(target, *arguments)
            values.append(target)


def _fused_vjp(g, out, *inputs, program):
    values = list(inputs)
    applications = []
    for op, operands in program:
        arguments = tuple(values[operand] for operand in operands)
        result = arguments[0]._apply(op, arguments)
        applications.append(Application(op, {}, arguments, result))
        values.append(result)
    gradients = {}

    def compute():
        if not gradients:
            gradients.update(backpropagate(applications, values[-1], g, inputs, key=id))
        return gradients

    return tuple((lambda x=x: compute()[id(x)]) if x.type.is_float else None for x in inputs)


def _fused_flops(out, *inputs, program):
    return len(program) * out.size


define_op("fused_elementwise", kind=OpKind.ELEMENTWISE, arity=VARIADIC, attrs={"program": A.PROGRAM},
          infer=_infer_fused, compute_into=_fused_into, vjp=_fused_vjp, cost=_fused_flops, inplace=True,
          scratch=_fused_scratch,
          doc="a chain of single-ufunc ops run block by block through cache-sized scratch arrays")
