"""Helpers shared by passes that rebuild a graph: copying a graph's values and nodes into a GraphBuilder."""

from __future__ import annotations

from typing import Optional, Sequence

from graphgpt.ir import Graph, GraphBuilder, ShapeError, TensorType, Value


def copy_into(graph: Graph, builder: GraphBuilder,
              input_types: Optional[Sequence[TensorType]] = None) -> dict[int, Value]:
    """Re-add every input, parameter and node of `graph` to `builder` (re-running each op's type rule), in the
    same order, so value ids are preserved. Returns old value id -> new Value."""
    if input_types is not None and len(input_types) != len(graph.inputs):
        raise ShapeError(f"graph has {len(graph.inputs)} inputs, got {len(input_types)} input types")
    new_values: dict[int, Value] = {}
    for position, value in enumerate(graph.inputs):
        new_type = input_types[position] if input_types is not None else value.type
        new_values[value.id] = builder.add_input(value.name, new_type)
    for value in graph.params:
        new_values[value.id] = builder.add_param(value.name, value.type)
    for node in graph.nodes:
        inputs = [new_values[value.id] for value in node.inputs]
        new_values[node.output.id] = builder.add_node(node.op, inputs, node.attrs, node.provenance)
    return new_values


def copied_results(graph: Graph, new_values: dict[int, Value]) -> tuple[list[Value], list[tuple[Value, Value]]]:
    """`graph`'s outputs and updates, mapped into the copy made by copy_into (for builder.finish)."""
    outputs = [new_values[value.id] for value in graph.outputs]
    updates = [(new_values[parameter.id], new_values[value.id]) for parameter, value in graph.updates]
    return outputs, updates
