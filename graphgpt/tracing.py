"""Tracing state: the active trace (if any), the stack of modules being called, whether eager ops record
gradients, and where the user's code is.

While a `Trace` is active, every Tensor op appends a node to its graph instead of computing. Provenance comes from
here: the module path of the innermost module being called (`blocks.0.attention.q_proj`), and the first stack
frame outside graphgpt's own machinery (the model's source line, not Tensor.__add__).

All of this state lives in context variables, never in process-wide lists: each thread (and each asyncio task)
sees only what it entered itself. So eager code in one thread is not traced by a compile running in another,
and `no_grad()` in one thread does not stop another thread's tape. A new thread starts outside any trace,
module and `no_grad()` block, whatever the thread that started it was inside.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping, Optional

from graphgpt import ir
from graphgpt.ir import GraphBuilder, Provenance, TensorType, Value


class TraceError(RuntimeError):
    """Something a static graph cannot capture was asked for during tracing (for example, Python control flow
    that depends on a traced value)."""


_GRAPHGPT_DIR = os.path.dirname(os.path.abspath(__file__))
# Frames in these places are machinery; the first frame elsewhere is the user's (or the model's) source line.
_INTERNAL_DIRS = (os.path.dirname(os.path.abspath(ir.__file__)) + os.sep,)
_INTERNAL_FILES = frozenset(os.path.join(_GRAPHGPT_DIR, name) for name in
                            ("tensor.py", "tracing.py", "compiler.py", "trace_entry.py", "dynamic.py",
                             os.path.join("nn", "module.py"), os.path.join("nn", "functional.py"),
                             os.path.join("nn", "masks.py"), os.path.join("nn", "kv_cache.py"),
                             os.path.join("nn", "state.py")))


@lru_cache(maxsize=None)  # called for every frame of every op's provenance; lru_cache is safe across threads
def _is_internal(filename: str) -> bool:
    absolute = os.path.abspath(filename)
    return absolute in _INTERNAL_FILES or absolute.startswith(_INTERNAL_DIRS)


def user_source_location() -> tuple[str, int]:
    """(filename, line) of the innermost frame outside graphgpt's machinery."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_internal(filename):
            return filename, frame.f_lineno
        frame = frame.f_back
    return "", 0


# ---- module scopes: maintained in eager and traced runs alike, so errors name the module in both -----------------

# The innermost module being called, as (path of every module under the root, this module's path), or None outside
# any module. Only the innermost is needed: leaving a module resets the variable to the scope around it. The paths
# mapping is built once per root call and never changed afterwards.
_module_scope: ContextVar[Optional[tuple[Mapping[int, str], str]]] = ContextVar("graphgpt_module_scope",
                                                                                 default=None)


@contextmanager
def module_scope(module):
    """Enter `module` for the duration of its forward; the outermost module called is the root (path '')."""
    enclosing = _module_scope.get()
    if enclosing is not None:
        paths = enclosing[0]
        path = paths.get(id(module), type(module).__name__)
    else:
        paths = MappingProxyType({id(child): name for name, child in module.named_modules()})
        path = ""
    token = _module_scope.set((paths, path))
    try:
        yield path
    finally:
        _module_scope.reset(token)


def current_module_path() -> str:
    scope = _module_scope.get()
    return scope[1] if scope is not None else ""


def current_provenance() -> Provenance:
    filename, lineno = user_source_location()
    return Provenance(current_module_path(), filename, lineno)


# ---- the trace ------------------------------------------------------------------------------------------------

class Trace:
    """Records Tensor ops into a graph. Parameters (and a module's buffers) are known up front (by id, with their
    module-path names) and become graph parameters, read live at every run; any other concrete tensor an op meets
    becomes a constant node."""

    def __init__(self, named_parameters: list[tuple[str, object]]):
        self.builder = GraphBuilder(header="traced")
        self._values_by_tensor_id: dict[int, Value] = {}
        self._keep_alive: list[object] = []  # ids must not be recycled while the trace maps them
        self._parameter_names: dict[int, str] = {}
        self._tensors_by_param_value: dict[int, object] = {}
        self._updates: dict[int, tuple[Value, Value]] = {}  # id(tensor) -> (its parameter, its value after a run)
        for name, parameter in named_parameters:
            value = self.builder.add_param(name, parameter.type)
            self._remember(parameter, value)
            self._parameter_names[id(parameter)] = name
            self._tensors_by_param_value[value.id] = parameter

    def parameter_name(self, tensor) -> Optional[str]:
        """The graph parameter name of `tensor` if it is one of this trace's parameters, else None. Its value is
        not part of the graph (each run reads the tensor's current value), so Python must not read it here."""
        return self._parameter_names.get(id(tensor))

    def bound_tensor(self, value: Value):
        """The tensor a graph parameter `value` of this trace stands for (None for any other value): for checks that
        may look at its current value without freezing it into the graph (an attention mask's convention)."""
        return self._tensors_by_param_value.get(value.id)

    def record_update(self, tensor, new_tensor) -> None:
        """Write `new_tensor`'s value into `tensor`, one of this trace's parameters or buffers, after every run of
        the graph (a graph update, as an optimizer step writes its weights): state a module advances per call,
        such as Dropout's random key. Later reads in this trace see the new value (latest_value)."""
        name = self.parameter_name(tensor)
        if name is None:
            raise TraceError("a compiled graph can advance only the parameters and buffers of the model it "
                             "compiles; this tensor is neither (compile the Module that holds it)")
        self._updates[id(tensor)] = (self._values_by_tensor_id[id(tensor)], self.value_of(new_tensor))

    def latest_value(self, tensor) -> Optional[Value]:
        """The value record_update last gave `tensor` in this trace, or None if it was not updated."""
        update = self._updates.get(id(tensor))
        return None if update is None else update[1]

    def _remember(self, tensor, value: Value) -> None:
        self._values_by_tensor_id[id(tensor)] = value
        self._keep_alive.append(tensor)

    def add_input(self, name: str, type: TensorType) -> Value:
        return self.builder.add_input(name, type)

    def value_of(self, tensor) -> Value:
        """The graph value of a tensor: its own if traced here, a parameter, or a new constant."""
        if tensor._traced is not None:
            if tensor._trace is not self:
                raise TraceError("a tensor from another trace was used in this one; compute it inside the "
                                 "traced function instead of keeping it from an earlier compile")
            return tensor._traced
        value = self._values_by_tensor_id.get(id(tensor))
        if value is None:
            value = self.builder.add_constant(tensor.data, current_provenance())
            self._remember(tensor, value)
        return value

    def emit(self, op: str, inputs: tuple, attrs: dict) -> Value:
        values = [self.value_of(tensor) for tensor in inputs]
        return self.builder.add_node(op, values, attrs, current_provenance())

    def finish(self, outputs: list) -> ir.Graph:
        return self.builder.finish([self.value_of(tensor) for tensor in outputs], list(self._updates.values()))


# The innermost active trace of this thread or task; leaving it resets the variable to the one it was entered in.
_active_trace: ContextVar[Optional[Trace]] = ContextVar("graphgpt_active_trace", default=None)


def current_trace() -> Optional[Trace]:
    return _active_trace.get()


@contextmanager
def tracing(trace: Trace):
    """Record this thread's (or task's) Tensor ops into `trace` for the duration of the block."""
    token = _active_trace.set(trace)
    try:
        yield trace
    finally:
        _active_trace.reset(token)


# ---- eager gradient recording ---------------------------------------------------------------------------------

# False inside no_grad() of this thread or task; leaving the block resets it to what it was around the block.
_grad_recording: ContextVar[bool] = ContextVar("graphgpt_grad_recording", default=True)


def grad_enabled() -> bool:
    return _grad_recording.get()


def enable_autograd() -> None:
    """The TinyTorch course's switch that patches gradients onto its Tensor. graphgpt's Tensor records them from
    the start (whenever an input requires grad, outside no_grad()), one rule per op, so there is nothing to turn
    on: this does nothing, and course code that calls it runs unchanged."""


@contextmanager
def no_grad():
    """Eager ops inside this block record nothing on the tape (as during backward() and optimizer steps); other
    threads and tasks keep recording."""
    token = _grad_recording.set(False)
    try:
        yield
    finally:
        _grad_recording.reset(token)
