"""GraphBuilder: the one way graphs are made. It checks attributes and runs each op's type rule as nodes are added,
so a graph under construction is always well typed, and errors name where the offending node came from."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from .errors import ShapeError
from .graph import Graph, Node, Provenance, Value
from .ops import get_op
from .types import TensorType

UNKNOWN_PROVENANCE = Provenance()


class GraphBuilder:
    """Append inputs, parameters and nodes; `finish(outputs)` returns the Graph.

    >>> b = GraphBuilder()
    >>> x = b.add_input("x", TensorType((2, 3), "float32"))
    >>> y = b.add_node("exp", [x])
    >>> print(b.finish([y]).nodes[0].op)
    exp
    """

    def __init__(self, header: str = "traced"):
        self._graph = Graph(header=header)
        self._next_id = 0
        self._used_ids: set[int] = set()
        self._names: set[str] = set()

    def _new_value(self, type: TensorType, kind: str, name: str = "", value_id: Optional[int] = None) -> Value:
        """A value with a fresh id, or with `value_id` (a pass keeping the ids of what it copies, so that what it
        created or removed can be told apart); ids are never reused within one builder."""
        if name:
            if name in self._names:
                raise ShapeError(f"two graph values are named {name!r}")
            self._names.add(name)
        if value_id is None:
            value_id = self._next_id
        elif value_id in self._used_ids:
            raise ShapeError(f"value id %{value_id} is used twice")
        self._used_ids.add(value_id)
        self._next_id = max(self._next_id, value_id + 1)
        return Value(value_id, type, kind, name)

    @property
    def next_id(self) -> int:
        return self._next_id

    def renumber(self, value: Value, value_id: int) -> None:
        """Give a value made by this builder another (unused) id: a rewrite's replacement keeps the identity of
        the value it replaces, so provenance and before/after comparisons still refer to it."""
        if value_id in self._used_ids:
            raise ShapeError(f"value id %{value_id} is used twice")
        self._used_ids.discard(value.id)
        self._used_ids.add(value_id)
        value.id = value_id

    def reserve_ids(self, below: int) -> None:
        """Make fresh ids start at `below` or above (a pass reserves the ids of its input graph)."""
        self._next_id = max(self._next_id, below)

    def add_input(self, name: str, type: TensorType, value_id: Optional[int] = None) -> Value:
        value = self._new_value(type, "input", name, value_id)
        self._graph.inputs.append(value)
        return value

    def add_param(self, name: str, type: TensorType, value_id: Optional[int] = None) -> Value:
        value = self._new_value(type, "param", name, value_id)
        self._graph.params.append(value)
        return value

    def add_node(self, op: str, inputs: Iterable[Value], attrs: Optional[dict[str, Any]] = None,
                 provenance: Provenance = UNKNOWN_PROVENANCE, value_id: Optional[int] = None) -> Value:
        """Append `op[attrs](*inputs)` after checking its attributes and inferring its type."""
        inputs = tuple(inputs)
        try:
            op_def = get_op(op)
            attrs = op_def.check_attrs(attrs or {})
            result_type = op_def.infer_type([value.type for value in inputs], attrs)
        except ShapeError as error:
            where = provenance.describe() if provenance.filename or provenance.module_path else ""
            raise ShapeError(f"{error}" + (f"\n  at {where}" if where else "")) from None
        output = self._new_value(result_type, "node", value_id=value_id)
        node = Node(op, inputs, attrs, output, provenance)
        output.producer = node
        self._graph.nodes.append(node)
        return output

    def add_constant(self, array, provenance: Provenance = UNKNOWN_PROVENANCE) -> Value:
        """A `constant` node holding a read-only copy of `array`, so no later change to the caller's array leaks
        into the graph."""
        frozen = np.array(array, copy=True)
        frozen.flags.writeable = False
        return self.add_node("constant", (), {"value": frozen}, provenance)

    def finish(self, outputs: Iterable[Value], updates: Iterable[tuple[Value, Value]] = ()) -> Graph:
        """The graph, returning `outputs` and writing each (parameter, new value) of `updates` after a run."""
        self._graph.outputs = list(outputs)
        self._graph.updates = list(updates)
        for parameter, new_value in self._graph.updates:
            if parameter.kind != "param" or parameter.type != new_value.type:
                raise ShapeError(f"update of {parameter!r} with {new_value!r}: updates must write a value of the "
                                 f"same type into a parameter")
        return self._graph
