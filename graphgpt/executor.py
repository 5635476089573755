"""The executor: lowers a graph once into a flat schedule of NumPy calls, then each run just walks the schedule.

Values live in a list of slots; after its last use a value's slot is cleared, so intermediates are freed as soon
as nothing needs them. A failure inside a step is reported with the node, its module path and source line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from graphgpt.ir import Graph, Node, get_op


class ExecutionError(RuntimeError):
    """A NumPy call of the schedule failed; the message names the graph node and the user's source line."""


@dataclass(frozen=True)
class Step:
    compute: Callable[..., Any]
    input_slots: tuple[int, ...]
    attrs: dict
    output_slot: int
    release_slots: tuple[int, ...]  # slots whose last use is this step
    node: Node


class Executor:
    """Runs `graph` on NumPy arrays: `executor.run(inputs, params) -> list of output arrays`."""

    def __init__(self, graph: Graph):
        self.graph = graph
        slot_of = {value.id: slot for slot, value in enumerate(graph.values())}
        self.num_slots = len(slot_of)
        self.input_slots = [slot_of[value.id] for value in graph.inputs]
        self.param_slots = [slot_of[value.id] for value in graph.params]
        self.output_slots = [slot_of[value.id] for value in graph.outputs]
        # (position in params, slot of its new value): written into the parameter arrays after a run
        param_position = {value.id: position for position, value in enumerate(graph.params)}
        self.update_slots = [(param_position[parameter.id], slot_of[value.id]) for parameter, value in graph.updates]

        last_use: dict[int, int] = {}
        for index, node in enumerate(graph.nodes):
            for value in node.inputs:
                last_use[value.id] = index
        kept = {value.id for value in graph.results()} | {value.id for value in graph.params}
        releases: dict[int, list[int]] = {}
        for value_id, index in last_use.items():
            if value_id not in kept:
                releases.setdefault(index, []).append(slot_of[value_id])

        self.steps = [
            Step(compute=get_op(node.op).compute,
                 input_slots=tuple(slot_of[value.id] for value in node.inputs),
                 attrs=node.attrs,
                 output_slot=slot_of[node.output.id],
                 release_slots=tuple(releases.get(index, ())),
                 node=node)
            for index, node in enumerate(graph.nodes)
        ]

    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of the graph for these inputs and parameter arrays; the graph's updates are then written into
        the parameter arrays in place (after every step has run, so no step reads a half-updated value)."""
        slots: list[Any] = [None] * self.num_slots
        for slot, array in zip(self.input_slots, inputs):
            slots[slot] = array
        for slot, array in zip(self.param_slots, params):
            slots[slot] = array
        for step in self.steps:
            try:
                result = step.compute(*[slots[slot] for slot in step.input_slots], **step.attrs)
            except Exception as error:  # any NumPy failure: say which node of whose code it was
                raise ExecutionError(f"{step.node.describe()} failed: {type(error).__name__}: {error}") from error
            slots[step.output_slot] = np.asarray(result)
            for slot in step.release_slots:
                slots[slot] = None
        outputs = [slots[slot] for slot in self.output_slots]
        for position, slot in self.update_slots:
            np.copyto(params[position], slots[slot])
        return outputs
