"""Horizontal fusion: matmuls that share their left operand and whose right operands are parameters (the q, k and
v projections of one attention layer) become one matmul against the parameters joined side by side; each
original result is a column slice of it, keeping its id.

The joined weight is rebuilt every run (a copy of the parameters, small next to the product), so the gradients
still flow to each parameter through concat's rule.
"""

from __future__ import annotations

from graphgpt.ir import Graph

from .result import PassResult
from .rewrite import rewrite_nodes


def _groups(graph: Graph) -> dict[int, list]:
    """Id of the first member -> the matmul nodes sharing a 2-D left operand with 2-D parameter right operands."""
    by_left: dict[tuple, list] = {}
    for node in graph.nodes:
        if node.op != "matmul":
            continue
        left, right = node.inputs
        if left.type.rank == 2 and right.type.rank == 2 and right.kind == "param":
            by_left.setdefault((left.id, right.shape[0], right.dtype), []).append(node)
    return {nodes[0].output.id: nodes for nodes in by_left.values() if len(nodes) > 1}


def fuse_horizontal_matmuls(graph: Graph) -> PassResult:
    groups = _groups(graph)

    def join_projections(node, inputs, context):
        pending = context.state.setdefault("pending", {})
        if node.output.id in pending:  # a later member: its slice already exists
            return pending.pop(node.output.id)
        nodes = groups.get(node.output.id)
        if nodes is None:
            return None
        weights = [context.mapped(member.inputs[1]) for member in nodes]
        joined = context.emit("concat", weights, {"axis": 1})
        product = context.emit("matmul", [inputs[0], joined])
        start = 0
        results = {}
        for member in nodes:
            width = member.output.shape[1]
            slices = ((0, product.shape[0], 1), (start, start + width, 1))
            results[member.output.id] = context.builder.add_node(
                "slice", [product], {"slices": slices}, member.provenance, value_id=member.output.id)
            start += width
        first = results.pop(node.output.id)
        pending.update(results)
        return first

    new_graph, fired = rewrite_nodes(graph, [join_projections], header="fuse_horizontal_matmuls")
    members = sum(len(nodes) for nodes in groups.values())
    return PassResult(new_graph, {"matmul groups joined": len(groups), "matmuls joined": members})
