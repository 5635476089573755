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
        self._names: set[str] = set()

    def _new_value(self, type: TensorType, kind: str, name: str = "") -> Value:
        if name:
            if name in self._names:
                raise ShapeError(f"two graph values are named {name!r}")
            self._names.add(name)
        value = Value(self._next_id, type, kind, name)
        self._next_id += 1
        return value

    def add_input(self, name: str, type: TensorType) -> Value:
        value = self._new_value(type, "input", name)
        self._graph.inputs.append(value)
        return value

    def add_param(self, name: str, type: TensorType) -> Value:
        value = self._new_value(type, "param", name)
        self._graph.params.append(value)
        return value

    def add_node(self, op: str, inputs: Iterable[Value], attrs: Optional[dict[str, Any]] = None,
                 provenance: Provenance = UNKNOWN_PROVENANCE) -> Value:
        """Append `op[attrs](*inputs)` after checking its attributes and inferring its type."""
        inputs = tuple(inputs)
        try:
            op_def = get_op(op)
            attrs = op_def.check_attrs(attrs or {})
            result_type = op_def.infer_type([value.type for value in inputs], attrs)
        except ShapeError as error:
            where = provenance.describe() if provenance.filename or provenance.module_path else ""
            raise ShapeError(f"{error}" + (f"\n  at {where}" if where else "")) from None
        output = self._new_value(result_type, "node")
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
