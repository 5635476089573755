"""Graph measurements the pass manager reports: FLOPs, and the memory every intermediate value would take if all
were kept alive at once (a tape's view). Memory with values freed after their last use comes from the liveness
analysis (passes/liveness.py) through the memory plan."""

from __future__ import annotations

from graphgpt.ir import Graph, get_op


def graph_flops(graph: Graph) -> int:
    return sum(get_op(node.op).flops(node.output.type, [value.type for value in node.inputs], node.attrs)
               for node in graph.nodes)


def keep_all_bytes(graph: Graph) -> int:
    """Bytes of every node's result, as if nothing were ever freed (a tape that keeps every intermediate)."""
    return sum(node.output.type.nbytes for node in graph.nodes)
