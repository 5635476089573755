"""The schedule: a graph lowered once into a flat list of NumPy calls over planned buffers, and that list written
as one straight-line Python function (passes/python_code.py) which each run calls. The last step of compiling,
and what a Program runs.

Buffers come from the memory plan (passes/memory_plan.py): allocated once per schedule and reused by every
run, each op writing into its planned buffer with `out=`. Views (reshape, transpose, slice, broadcast) of planned
buffers are made once, with the buffers; views of inputs and parameters afresh each run. A failure inside a step
is reported with the node, its module path and source line. With check_numerics the list is walked step by step
instead, checking every value.

Arrays returned by run() live in the schedule's buffers: the next run overwrites them (graphgpt.Compiled copies
what it hands to users).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, Node, get_op
from graphgpt.ir.scratch import scratch_arena
from .memory_plan import BUFFER_ALIGNMENT, MemoryPlan, plan_memory
from .python_code import StraightLineCode
from .steps import INTO_BUFFER, INTO_PARAM, VIEW, Step, writer


class ExecutionError(RuntimeError):
    """A NumPy call of the schedule failed; the message names the graph node and the user's source line."""


class NumericalError(ExecutionError):
    """With check_numerics, a node produced NaN or infinity; the message names the first such node."""


# check_numerics modes: "nan" flags NaN; "nonfinite" flags infinities too. As in JAX (debug_nans, debug_infs):
# infinities can be intended (the causal mask's -inf), NaN never is.
NUMERICS_MODES = ("nan", "nonfinite")


def _is_bad(value: np.ndarray, mode: str) -> bool:
    if value.dtype.kind != "f":
        return False
    return bool(np.isnan(value).any()) if mode == "nan" else not bool(np.isfinite(value).all())


def _check_values(step: "Step", value: np.ndarray, mode: str) -> None:
    if _is_bad(value, mode):
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        inputs = ", ".join(f"{v.label}" for v in step.node.inputs)
        raise NumericalError(f"{step.node.describe()} produced {nan} NaN and {inf} infinite value(s) of "
                             f"{value.size} from inputs {inputs or '(none)'}: the first node of this run to do so")


def _typed_view(raw: np.ndarray, node: Node) -> np.ndarray:
    """The first bytes of a raw buffer seen as the node's output array."""
    value_type = node.output.type
    return raw[:value_type.nbytes].view(value_type.numpy_dtype).reshape(value_type.shape)


def _carve_arena(plan: MemoryPlan) -> tuple[list[np.ndarray], np.ndarray]:
    """The plan's buffers at their offsets in one allocation, and the kernel scratch after them. One allocation:
    NumPy asks the kernel for transparent huge pages only for allocations of 4 MiB and more; separate buffers
    (most of them 1-4 MiB in a GPT) got 4 KiB pages, and every pass over them paid TLB misses."""
    arena = np.empty(plan.arena_bytes + plan.scratch_bytes + BUFFER_ALIGNMENT, np.uint8)
    start = -arena.ctypes.data % BUFFER_ALIGNMENT
    buffers = [arena[start + offset:start + offset + size]
               for offset, size in zip(plan.buffer_offsets, plan.buffer_bytes)]
    scratch_start = start + plan.arena_bytes
    return buffers, arena[scratch_start:scratch_start + plan.scratch_bytes]


class Schedule:
    """Runs `graph` on NumPy arrays: `schedule.run(inputs, params) -> list of output arrays`; the graph's updates
    are written into the parameter arrays in place. With a `backend` (passes/backends.py), a node it has a
    generated kernel for runs that kernel instead of its op's NumPy kernel; `kernels` lists them by node."""

    def __init__(self, graph: Graph, plan: Optional[MemoryPlan] = None, check_numerics=False, backend=None):
        self.graph = graph
        self.kernels: list[tuple[Node, Any]] = []  # (node, its GeneratedKernel), in schedule order
        self.check_numerics = "nan" if check_numerics is True else (check_numerics or None)
        if self.check_numerics not in (None, *NUMERICS_MODES):
            raise ValueError(f"check_numerics must be False, True, 'nan' or 'nonfinite', got {check_numerics!r}")
        self.plan = plan if plan is not None else plan_memory(graph)
        slot_of = self.slot_of = {value.id: slot for slot, value in enumerate(graph.values())}
        self.num_slots = len(slot_of)
        self.input_slots = [slot_of[value.id] for value in graph.inputs]
        self.param_slots = [slot_of[value.id] for value in graph.params]
        self.output_slots = [slot_of[value.id] for value in graph.outputs]
        param_position = {value.id: position for position, value in enumerate(graph.params)}
        # Updates not computed straight into their parameter are copied in after the run.
        self.update_copies = [(param_position[parameter.id], slot_of[value.id]) for parameter, value in graph.updates
                              if self.plan.storage[value.id].kind != "into_param"]
        # The kernel scratch (ir/scratch.py) after the buffers: this schedule's own, so concurrent schedules
        # (data-parallel shards) never share it.
        self.buffers, self.scratch = _carve_arena(self.plan)
        self.constants = []  # (slot, array): set once per run, before the schedule
        # Views of planned buffers, made once here: a buffer's address never changes, so neither does a view of
        # it (nor a view of such a view). Views of inputs and parameters are made again when the input's or
        # parameter's array is another one (passes/python_code.py).
        self.fixed_views: list[tuple[int, np.ndarray, Node]] = []
        fixed: dict[int, np.ndarray] = {}  # slot -> its array, for values whose memory is planned here
        self.steps = []
        for node in graph.nodes:
            op = get_op(node.op)
            storage = self.plan.storage[node.output.id]
            slot = slot_of[node.output.id]
            if storage.kind == "constant":
                fixed[slot] = node.attrs["value"]
                self.constants.append((slot, fixed[slot]))
                continue
            inputs = tuple(slot_of[value.id] for value in node.inputs)
            if storage.kind == "view":
                if all(input_slot in fixed for input_slot in inputs):
                    fixed[slot] = op.compute(*(fixed[input_slot] for input_slot in inputs), **node.attrs)
                    self.fixed_views.append((slot, fixed[slot], node))
                    continue
                self.steps.append(Step(VIEW, op.compute, inputs, node.attrs, slot, None, -1, node))
                continue
            kernel = backend.kernel_for(node) if backend is not None else None
            if kernel is not None:
                self.kernels.append((node, kernel))  # its attributes are written into its source
            function, attrs = ((kernel.function_for(self.plan.written_over(node)), {}) if kernel is not None
                               else (writer(op), node.attrs))
            if storage.kind == "into_param":
                step = Step(INTO_PARAM, function, inputs, attrs, slot, None, param_position[storage.source], node)
            else:
                out = fixed[slot] = _typed_view(self.buffers[storage.buffer], node)
                step = Step(INTO_BUFFER, function, inputs, attrs, slot, out, -1, node)
            self.steps.append(step)
        self.code = StraightLineCode(self)  # what run() calls (the loop below runs with check_numerics)

    @property
    def planned_bytes(self) -> int:
        return self.plan.planned_bytes

    def initial_slots(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[Any]:
        """The value slots before the first step: inputs, parameters and constants in place."""
        slots: list[Any] = [None] * self.num_slots
        for slot, array in zip(self.input_slots, inputs):
            slots[slot] = array
        for slot, array in zip(self.param_slots, params):
            slots[slot] = array
        for slot, array in self.constants:
            slots[slot] = array
        for slot, array, _ in self.fixed_views:
            slots[slot] = array
        return slots

    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of the graph for these inputs and parameter arrays (C-contiguous, of the graph's types)."""
        with scratch_arena(self.scratch):  # kernels take their scratch from the planned arena during the run
            return self._run_steps(inputs, params)

    def _run_steps(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.check_numerics:
            return self._interpret(inputs, params)
        try:
            return self.code.run(inputs, params)
        except Exception as error:  # any NumPy failure: say which node of whose code it was
            node = self.code.failing_node(error.__traceback__)
            if node is None:
                raise
            raise ExecutionError(f"{node.describe()} failed: {type(error).__name__}: {error}") from error

    def run_observed(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray],
                     observe: Callable[[Step, float], None]) -> list[np.ndarray]:
        """run(), one step at a time, calling observe(step, seconds it took) after each (passes/profile.py)."""
        with scratch_arena(self.scratch):
            return self._interpret(inputs, params, observe)

    def _interpret(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray],
                   observe: Optional[Callable[[Step, float], None]] = None) -> list[np.ndarray]:
        """The steps one at a time from a list of slots, checking each value (check_numerics) and timing each
        step for `observe`."""
        slots = self.initial_slots(inputs, params)
        checking = self.check_numerics
        if checking:  # inputs and parameters first: a NaN fed in is not the graph's fault
            for value, array in zip((*self.graph.inputs, *self.graph.params), (*inputs, *params)):
                if _is_bad(array, checking):
                    raise NumericalError(f"{value.label} ({value.kind}) holds NaN or infinity before the run")
        for step in self.steps:
            arrays = [slots[slot] for slot in step.input_slots]
            started = time.perf_counter()
            try:
                if step.mode == INTO_BUFFER:
                    step.function(step.out, *arrays, **step.attrs)
                    slots[step.output_slot] = step.out
                elif step.mode == VIEW:
                    slots[step.output_slot] = step.function(*arrays, **step.attrs)
                else:
                    target = params[step.param_position]
                    step.function(target, *arrays, **step.attrs)
                    slots[step.output_slot] = target
            except Exception as error:  # any NumPy failure: say which node of whose code it was
                raise ExecutionError(f"{step.node.describe()} failed: {type(error).__name__}: {error}") from error
            if observe is not None:
                observe(step, time.perf_counter() - started)
            if checking:
                _check_values(step, slots[step.output_slot], checking)
        outputs = [slots[slot] for slot in self.output_slots]
        for position, slot in self.update_copies:
            np.copyto(params[position], slots[slot])
        return outputs
