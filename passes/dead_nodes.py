"""Dead-node elimination: drop every node whose value no output or update needs (and that has no side effect:
ops here have none)."""

from __future__ import annotations

from graphgpt.ir import Graph, GraphBuilder

from .result import PassResult
from .rewrite import copied_results, copy_leaves


def live_value_ids(graph: Graph) -> set[int]:
    """Ids of the values the graph's results depend on."""
    live = {value.id for value in graph.results()}
    for node in reversed(graph.nodes):
        if node.output.id in live:
            live.update(value.id for value in node.inputs)
    return live


def eliminate_dead_nodes(graph: Graph) -> PassResult:
    """A copy of `graph` without the nodes its results do not depend on."""
    live = live_value_ids(graph)
    builder = GraphBuilder(header="eliminate_dead_nodes")
    new_values = copy_leaves(graph, builder)
    for node in graph.nodes:
        if node.output.id in live:
            new_values[node.output.id] = builder.add_node(
                node.op, [new_values[value.id] for value in node.inputs], node.attrs, node.provenance,
                value_id=node.output.id)
    removed = len(graph.nodes) - sum(node.output.id in live for node in graph.nodes)
    return PassResult(builder.finish(*copied_results(graph, new_values)), {"nodes removed": removed})
