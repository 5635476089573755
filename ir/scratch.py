"""Scratch memory for kernels: the one allocator every kernel that needs temporary arrays asks.

A kernel that makes several passes over blocks of its operands (the fused elementwise op, layer norm, the backward
kernels) keeps its intermediates in scratch arrays: `scratch_arrays(op, shapes, dtype)` hands it views carved
from one flat buffer. Where that buffer comes from:

- During a schedule's run (passes/schedule.py), from the schedule's own arena (`scratch_arena(buffer)` sets it for the run): part of
  the single allocation the memory plan sized, so the plan's planned bytes count it. Each op declares in its
  OpDef how much scratch one application takes (`scratch=`); the plan reserves the largest declaration of the
  graph, since a schedule runs one kernel at a time. A kernel asking for more than the arena holds raises
  ScratchOverflowError naming the op: a declaration that is too small is a bug for the tests to find, never
  hidden by allocating behind the plan's back.
- Otherwise (eager execution, op by op; constant folding), from a pool of this thread's own that grows to the
  largest request and is then reused: fresh arrays would pay first-touch page faults on every call (see
  ir/ops/blockwise.py for the measurements), which is why scratch is reused at all.

The arena is a context variable and the pool is per thread, so concurrent runs (data-parallel shards, user
threads) never share scratch. A kernel holds its scratch until it returns and must not call another kernel that
takes scratch meanwhile: both would be handed the same memory.
"""

from __future__ import annotations

import contextlib
import math
import threading
from contextvars import ContextVar
from typing import Iterator, Optional, Sequence

import numpy as np

# Every scratch array starts on a cache-line boundary (64 bytes) of its buffer: no two share a line, SIMD loads
# stay aligned. The padding is part of what a request takes, so its size does not depend on where buffers lie.
ALIGNMENT = 64

Shape = tuple[int, ...]


class ScratchOverflowError(RuntimeError):
    """A kernel asked a planned arena for more scratch than the memory plan reserved: its op's `scratch`
    declaration is smaller than what its kernel uses."""


# The arena of the schedule run in progress in this context; None outside runs (eager execution).
_current_arena: ContextVar[Optional[np.ndarray]] = ContextVar("graphgpt_scratch_arena", default=None)
# Per thread: the eager pool (attribute `buffer`), grown to the largest request seen on that thread.
_eager_pools = threading.local()


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def scratch_nbytes(shapes: Sequence[Shape], dtype) -> int:
    """Bytes that `scratch_arrays` takes for arrays of these shapes and dtype: what an op declares.

    >>> scratch_nbytes([(2, 3), (5,)], np.float32)   # 24 and 20 bytes, each padded to a cache line
    128
    """
    itemsize = np.dtype(dtype).itemsize
    return sum(_aligned(math.prod(shape) * itemsize) for shape in shapes)  # math.prod: ~10x np.prod's speed


@contextlib.contextmanager
def scratch_arena(buffer: np.ndarray) -> Iterator[None]:
    """Kernels run inside take their scratch from `buffer` (uint8, at least as large as any of their
    declarations), and raise ScratchOverflowError rather than exceed it.

    >>> with scratch_arena(np.empty(4096, np.uint8)):   # doctest: +SKIP
    ...     run_the_steps()
    """
    token = _current_arena.set(buffer)
    try:
        yield
    finally:
        _current_arena.reset(token)


def _eager_buffer(needed: int) -> np.ndarray:
    """This thread's pool, grown if `needed` bytes do not fit, starting on a cache-line boundary."""
    pool = getattr(_eager_pools, "buffer", None)
    if pool is None or pool.size < needed:
        raw = np.empty(needed + ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        pool = _eager_pools.buffer = raw[start:start + needed]
    return pool


def scratch_arrays(op: str, shapes: Sequence[Shape], dtype) -> list[np.ndarray]:
    """Arrays of these shapes and dtype for op `op`'s kernel, contents undefined, valid until the kernel returns:
    carved from the current schedule's arena, else from this thread's pool."""
    dtype = np.dtype(dtype)
    needed = scratch_nbytes(shapes, dtype)
    arena = _current_arena.get()
    if arena is None:
        buffer = _eager_buffer(needed)
    elif needed > arena.size:
        raise ScratchOverflowError(
            f"{op} asked for {needed} bytes of scratch, more than the {arena.size} the memory plan reserved: "
            f"the op's `scratch` declaration must count every array its kernel takes")
    else:
        buffer = arena
    arrays, offset = [], 0
    for shape in shapes:
        size = math.prod(shape) * dtype.itemsize
        arrays.append(buffer[offset:offset + size].view(dtype).reshape(shape))
        offset += _aligned(size)
    return arrays
