"""Running a multi-pass kernel block by block, with its scratch from the one scratch allocator (ir/scratch.py).

A kernel such as GELU's gradient makes a dozen passes over its operands and needs two intermediates. Run over
whole arrays, each pass streams megabytes through memory and the intermediates are fresh allocations, whose
first touch page-faults (measured on the MLP's 8x128x1024 activations: 4.4 ms a call with fresh scratch, 2.1 ms
with reused scratch, 1.9 ms in 256K-element blocks). So the kernel runs on blocks of whole rows small enough to
stay in cache between its passes, and its scratch arrays, one block each, are reused: the schedule's planned
arena during a compiled run, a per-thread pool in eager execution.

An op's `RowBlocking` says how its kernel is cut and how many scratch arrays it takes; the kernel runs through
it and the op declares its scratch through it, so the declaration and what the kernel asks for cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..scratch import Shape, scratch_arrays, scratch_nbytes
from ..types import TensorType

# Elements per block: 1 MiB of float32, the L2 cache of one core here.
BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class RowBlocking:
    """How op `op`'s kernel is cut: blocks of whole rows of the last axis (`whole_rows`, for row-wise reductions)
    or flat runs of elements, each with `scratch_arrays` scratch arrays of the block's shape."""

    op: str
    scratch_arrays: int
    whole_rows: bool

    def layout(self, shape: Shape) -> tuple[Shape, int]:
        """(the shape arrays of `shape` are cut as: (rows,) or (rows, row length), the rows of each block)."""
        row_length = shape[-1] if self.whole_rows else 0
        width = max(row_length, 1)
        size = math.prod(shape)  # of Python ints: exact, and ~10x faster than np.prod on a tuple
        rows = size // width if size else 0
        block_rows = max(1, BLOCK_ELEMENTS // width)  # read at each call: tests vary it
        return ((rows,) if row_length == 0 else (rows, width)), block_rows

    def scratch_shapes(self, shape: Shape) -> list[Shape]:
        """The scratch arrays the kernel takes for arrays of `shape`: each of the largest block's shape."""
        cut, block_rows = self.layout(shape)
        return [(min(block_rows, cut[0]),) + cut[1:]] * self.scratch_arrays if cut[0] else []

    def scratch_bytes(self, out: TensorType, first: TensorType, *rest: TensorType, **attrs) -> int:
        """The op's `scratch` declaration (OpDef): what `blocks` and `run` ask for, given that the arrays they
        cut have the shape and dtype of the op's first input."""
        return scratch_nbytes(self.scratch_shapes(first.shape), first.numpy_dtype)

    def blocks(self, arrays: Sequence[np.ndarray]) -> Iterator[list]:
        """Blocks of `arrays` (all of one shape) cut alike, plus this op's scratch arrays of the block's shape:
        yields [block of each array..., scratch...]. A non-contiguous array is copied by the reshape, so arrays
        written through their blocks must be C-contiguous."""
        cut, block_rows = self.layout(arrays[0].shape)
        flat = [np.reshape(array, cut) for array in arrays]
        scratch = scratch_arrays(self.op, self.scratch_shapes(arrays[0].shape), arrays[0].dtype)
        for start in range(0, cut[0], block_rows):
            stop = min(start + block_rows, cut[0])
            yield [array[start:stop] for array in flat] + [array[:stop - start] for array in scratch]

    def run(self, kernel: Callable[..., None], out: np.ndarray, row_arrays: Sequence[np.ndarray],
            shared: Sequence = ()) -> None:
        """kernel(out_block, *row_array_blocks, *shared, *scratch_blocks) over the blocks of `out` (see blocks):
        `row_arrays` have out's shape and are cut like it; `shared` are passed whole (a per-feature gamma)."""
        if not out.flags.c_contiguous:
            raise ValueError("a row-blocked kernel writes through a reshape of out, which must be C-contiguous")
        cut, block_rows = self.layout(out.shape)
        if cut[0] == 0:  # no rows: nothing to compute
            return
        if cut[0] <= block_rows:  # one block (a decode step's few rows): the same call, without the generator
            scratch = scratch_arrays(self.op, [cut] * self.scratch_arrays, out.dtype)
            kernel(np.reshape(out, cut), *(np.reshape(array, cut) for array in row_arrays), *shared, *scratch)
            return
        count = 1 + len(row_arrays)  # blocks come as [out, *row_arrays, *scratch]
        for blocks in self.blocks([out, *row_arrays]):
            kernel(*blocks[:count], *shared, *blocks[count:])
