"""Dead-node elimination: drop every node whose value no output or update needs (and that has no side effect:
ops here have none). Also the sweep of a pass that replaces a pattern and leaves its old nodes dead
(`rewrite_dropping_dead`), and how many readers each value has (`value_uses`), which such rules look at."""

from __future__ import annotations

from collections import Counter

from graphgpt.ir import Graph, GraphBuilder

from .result import PassResult
from .rewrite import RewriteRule, copied_results, copy_leaves, rewrite_nodes


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


def value_uses(graph: Graph) -> Counter:
    """How many times each value is read: by nodes, as an output, as an update's new value."""
    uses = Counter(value.id for node in graph.nodes for value in node.inputs)
    uses.update(value.id for value in graph.results())
    return uses


def rewrite_dropping_dead(graph: Graph, rule: RewriteRule, header: str) -> tuple[Graph, int]:
    """One sweep of `rule` (rewrite_nodes), then the nodes its replacements left unread dropped: the new graph
    (named `header`) and how often the rule fired."""
    new_graph, fired = rewrite_nodes(graph, [rule], header=header)
    count = fired[rule.__name__]
    if count:
        new_graph = eliminate_dead_nodes(new_graph).graph
        new_graph.header = header
    return new_graph, count
