"""Dynamic sizes for graphgpt.compile: which input axes a trace leaves symbolic (`dynamic=("batch", "seq")`), the
ShapeEnv that records the guards of a symbolic trace (ir/dims.py), and the concrete programs a symbolic one is
specialised into: one per size, made on first use and kept, the least recently used dropped past a limit.

    graphgpt.compile(model, tokens, dynamic=True)   # one trace: f32[B,T,64] in the text IR, every B and T served
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from graphgpt.ir import TensorType
from graphgpt.ir.dims import Dim
from graphgpt.ir.shape_env import ShapeEnv
from graphgpt.passes.program import Program
from graphgpt.passes.specialize import describe_sizes

from .tracing import _is_internal, user_source_location

# The names `dynamic=` takes, each the symbol it prints as and the axis of every input it marks.
DYNAMIC_AXES = {"batch": ("B", 0), "seq": ("T", 1)}
# Concrete programs kept per symbolic compile (each holds its planned buffers), as torch's cache_size_limit.
SPECIALIZATIONS_KEPT = 8


def dynamic_names(dynamic) -> tuple[str, ...]:
    """The axis names a `dynamic=` option marks: None or False none, True all, a name or a sequence of names."""
    if dynamic is None or dynamic is False:
        return ()
    if dynamic is True:
        return tuple(DYNAMIC_AXES)
    names = (dynamic,) if isinstance(dynamic, str) else tuple(dynamic)
    unknown = [name for name in names if name not in DYNAMIC_AXES]
    if unknown or not names:
        raise ValueError(f"dynamic= takes None (automatic), False, True or names from {list(DYNAMIC_AXES)} "
                         f"(batch: axis 0 of every input, seq: axis 1), got {dynamic!r}")
    return tuple(dict.fromkeys(names))


def symbolic_input_types(examples: Sequence[np.ndarray], input_names: Sequence[str],
                         names: Sequence[str]) -> tuple[list[TensorType], dict[str, int]]:
    """The inputs' types with the marked axes symbolic, and the examples' size for each symbol (its hint)."""
    shapes = [list(example.shape) for example in examples]
    hints: dict[str, int] = {}
    for name in names:
        symbol, axis = DYNAMIC_AXES[name]
        marked = [(input_name, shape) for input_name, shape in zip(input_names, shapes) if len(shape) > axis]
        if not marked:
            raise ValueError(f"dynamic {name!r} marks axis {axis} of every input, but no input has that axis")
        sizes = {input_name: shape[axis] for input_name, shape in marked}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"dynamic {name!r} marks axis {axis} of every input as one size {symbol}, but the "
                             f"examples differ there: {sizes}")
        hints[symbol] = next(iter(sizes.values()))
        if hints[symbol] < 1:
            raise ValueError(f"dynamic {name!r}: the example's size is {hints[symbol]}; a symbolic size is traced "
                             f"from an example of at least 1")
        for _, shape in marked:
            shape[axis] = Dim.symbol(symbol)
    return [TensorType(tuple(shape), example.dtype) for shape, example in zip(shapes, examples)], hints


def _where_asked() -> str:
    filename, line = user_source_location()
    return f"{os.path.basename(filename)}:{line}" if filename else ""


def make_shape_env(hints: dict[str, int]) -> ShapeEnv:
    """A ShapeEnv answering from `hints`, its guards located at the user's source line; graphgpt's own machinery
    (tensor.py, compiler.py, ...) may not turn a symbol into a number, the user's and the model's code may."""
    return ShapeEnv(dict(hints), locate=_where_asked, allows_specialising=lambda filename: not _is_internal(filename))


class Specializations:
    """The concrete programs of one symbolic program, by sizes: made on first use, the least recently used one
    dropped past `limit`. Safe to share between threads."""

    def __init__(self, program: Program, limit: int = SPECIALIZATIONS_KEPT,
                 on_drop: Callable[[str], None] = lambda message: None):
        self.program = program
        self.limit = limit
        self._on_drop = on_drop
        self._programs: OrderedDict[tuple, Program] = OrderedDict()
        self.seconds: dict[tuple, float] = {}  # how long each specialisation took (plan and schedule included)
        self._lock = threading.Lock()

    def get(self, sizes: dict[str, int]) -> Program:
        key = tuple(sizes.items())
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
            started = time.perf_counter()
            program = self.program.specialize(sizes)
            self.seconds[key] = time.perf_counter() - started
            self._programs[key] = program
            if len(self._programs) > self.limit:
                dropped, _ = self._programs.popitem(last=False)
                self._on_drop(f"dropping the plan for sizes {describe_sizes(dict(dropped))} of a symbolic compile "
                              f"(least recently used; {self.limit} kept)")
            return program

    def latest_sizes(self, default: dict[str, int]) -> dict[str, int]:
        """The sizes of the program used last (or `default`, the example's, before any run)."""
        with self._lock:
            return dict(next(reversed(self._programs))) if self._programs else dict(default)
