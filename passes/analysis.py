"""Graph measurements the pass manager reports: FLOPs, and the memory that intermediate values need, either all
kept alive at once or each freed after its last use (liveness over the node order)."""

from __future__ import annotations

from graphgpt.ir import Graph, get_op


def graph_flops(graph: Graph) -> int:
    return sum(get_op(node.op).flops(node.output.type, [value.type for value in node.inputs], node.attrs)
               for node in graph.nodes)


def keep_all_bytes(graph: Graph) -> int:
    """Bytes of every node's result, as if nothing were ever freed (a tape that keeps every intermediate)."""
    return sum(node.output.type.nbytes for node in graph.nodes)


def last_uses(graph: Graph) -> dict[int, int]:
    """Value id -> index of the last node that reads it; results live to the end (len(graph.nodes))."""
    last = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value.id] = index
    for value in graph.results():
        last[value.id] = len(graph.nodes)
    return last


def peak_live_bytes(graph: Graph) -> int:
    """Largest total size of node results alive at once when each is freed right after its last use."""
    last = last_uses(graph)
    freed_at: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        end = last.get(node.output.id, index)  # a value nobody reads is freed as soon as it is made
        freed_at[end] = freed_at.get(end, 0) + node.output.type.nbytes
    live = peak = 0
    for index, node in enumerate(graph.nodes):
        live += node.output.type.nbytes
        peak = max(peak, live)
        live -= freed_at.get(index, 0)
    return peak
