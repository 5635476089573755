"""Shape inference as a pass: rebuild the graph with every node's type derived from the op rules alone.

Types come from the graph's input and parameter types and each op's `infer`; no data is touched. Given new input
types it re-specialises the graph (and says which node's rule refuses them, if one does).
"""

from __future__ import annotations

from typing import Optional, Sequence

from graphgpt.ir import Graph, GraphBuilder, TensorType

from .rewrite import copied_results, copy_into


def infer_shapes(graph: Graph, input_types: Optional[Sequence[TensorType]] = None) -> Graph:
    """A new graph whose types are re-derived from the op rules.

    >>> typed = infer_shapes(graph)                                 # doctest: +SKIP
    >>> longer = infer_shapes(graph, [TensorType((4, 16), "int64")])  # doctest: +SKIP
    """
    builder = GraphBuilder(header="infer_shapes")
    new_values = copy_into(graph, builder, input_types)
    return builder.finish(*copied_results(graph, new_values))
