"""Elementwise fusion: chains and trees of single-ufunc ops of one output type become one fused_elementwise node
(GELU's gradient, the elementwise parts of LayerNorm's and softmax-cross-entropy's gradients, bias-add then
residual-add, Adam's update), run block by block through cache-sized scratch arrays.

A node joins the group of an input's producer when that input is read by nothing else and has the node's type;
two groups feeding one node merge. The intermediates of a group are then used only inside it, so the group can
be emitted as one node at the position of its last member (its sink), keeping the sink's id and provenance.
"""

from __future__ import annotations

from graphgpt.ir import Graph, GraphBuilder, get_op
from graphgpt.ir.dims import example_value
from graphgpt.ir.ops.fused import BLOCK_ELEMENTS

from .result import PassResult
from .rewrite import copied_results, copy_leaves


# Fusion pays where a chain's arrays outgrow the caches: measured on the GPT's groups here, 5-op chains over
# (8, 128, 256) (1 MiB) ran ~20% slower fused (the arrays already fit in L2/L3 and per-block dispatch costs
# more), while 5- and 12-op chains over (8, 128, 1024) (4 MiB) ran faster. Smaller groups stay unfused.
MIN_FUSED_ELEMENTS = 4 * BLOCK_ELEMENTS


def _groups(graph: Graph, min_elements: int) -> dict[int, list]:
    """Sink node id -> member nodes in program order, for every group of two or more nodes."""
    users = graph.users()
    results = {value.id for value in graph.results()}
    group_of: dict[int, int] = {}  # node id -> group key
    members: dict[int, list] = {}
    for node in graph.nodes:
        if (not get_op(node.op).fusible or not node.output.type.is_float
                or example_value(node.output.type.size) < min_elements):  # a speed heuristic: at the example size
            continue
        joined = []
        for value in node.inputs:
            producer = value.producer
            if (producer is not None and producer.output.id in group_of and len(users[value.id]) == 1
                    and value.id not in results and value.type == node.output.type):
                key = group_of[producer.output.id]
                if key not in joined:
                    joined.append(key)
        key = joined[0] if joined else node.output.id
        members.setdefault(key, [])
        for other in joined[1:]:  # two chains meeting at this node become one group
            for member in members.pop(other):
                group_of[member.output.id] = key
                members[key].append(member)
        members[key].append(node)
        group_of[node.output.id] = key
    order = {node.output.id: index for index, node in enumerate(graph.nodes)}
    groups = {}
    for nodes in members.values():
        if len(nodes) > 1:
            nodes.sort(key=lambda member: order[member.output.id])
            groups[nodes[-1].output.id] = nodes
    return groups


def fuse_elementwise(graph: Graph, min_elements: int = MIN_FUSED_ELEMENTS) -> PassResult:
    """Replace each group of fusible elementwise nodes (outputs of at least `min_elements`) by one
    fused_elementwise node."""
    groups = _groups(graph, min_elements)
    fused_members = {member.output.id for nodes in groups.values() for member in nodes}
    builder = GraphBuilder(header="fuse_elementwise")
    new_values = copy_leaves(graph, builder)
    for node in graph.nodes:
        if node.output.id in groups:
            nodes = groups[node.output.id]
            inside = {member.output.id for member in nodes}
            external = []
            for member in nodes:
                for value in member.inputs:
                    if value.id not in inside and value.id not in external:
                        external.append(value.id)
            operand = {value_id: position for position, value_id in enumerate(external)}
            program = []
            for member in nodes:
                program.append((member.op, tuple(operand[value.id] for value in member.inputs)))
                operand[member.output.id] = len(external) + len(program) - 1
            new_values[node.output.id] = builder.add_node(
                "fused_elementwise", [new_values[value_id] for value_id in external], {"program": tuple(program)},
                node.provenance, value_id=node.output.id)
        elif node.output.id not in fused_members:
            new_values[node.output.id] = builder.add_node(
                node.op, [new_values[value.id] for value in node.inputs], node.attrs, node.provenance,
                value_id=node.output.id)
    summary = {"groups fused": len(groups), "nodes fused": len(fused_members)}
    return PassResult(builder.finish(*copied_results(graph, new_values)), summary)
