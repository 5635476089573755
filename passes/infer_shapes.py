"""Shape inference as a pass: rebuild the graph with every node's type derived from the op rules alone.

Types come from the graph's input and parameter types and each op's `infer`; no data is touched. Given new input
types it re-specialises the graph (and says which node's rule refuses them, if one does).
"""

from __future__ import annotations

from typing import Optional, Sequence

from graphgpt.ir import Graph, GraphBuilder, ShapeError, TensorType


def infer_shapes(graph: Graph, input_types: Optional[Sequence[TensorType]] = None) -> Graph:
    """A new graph whose types are re-derived from the op rules.

    >>> typed = infer_shapes(graph)                                 # doctest: +SKIP
    >>> longer = infer_shapes(graph, [TensorType((4, 16), "int64")])  # doctest: +SKIP
    """
    if input_types is not None and len(input_types) != len(graph.inputs):
        raise ShapeError(f"graph has {len(graph.inputs)} inputs, got {len(input_types)} input types")
    builder = GraphBuilder(header="infer_shapes")
    new_values = {}
    for position, value in enumerate(graph.inputs):
        new_type = input_types[position] if input_types is not None else value.type
        new_values[value.id] = builder.add_input(value.name, new_type)
    for value in graph.params:
        new_values[value.id] = builder.add_param(value.name, value.type)
    for node in graph.nodes:
        inputs = [new_values[value.id] for value in node.inputs]
        new_values[node.output.id] = builder.add_node(node.op, inputs, node.attrs, node.provenance)
    return builder.finish([new_values[value.id] for value in graph.outputs])
