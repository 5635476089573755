"""What a training graph keeps from its forward pass for its backward pass, and what rematerialisation changed: the
measures shared by passes/rematerialize.py, the program's report and the diagrams.

The forward region is every node before the first backward node (the model, the loss, a shard's scaling); saved
activations are its values that nodes after it read. A recomputed node (role "recompute") is a forward op the
backward pass repeats.

    print(describe_rematerialization(before_graph, before_plan, after_graph, after_plan))
"""

from __future__ import annotations

from typing import Iterable

from graphgpt.ir import Graph, Node, get_op

from .memory_plan import MemoryPlan

RECOMPUTE = "recompute"  # the provenance role of a recomputed node (ir/graph.py ROLES)


def forward_region_end(graph: Graph) -> int:
    """Index of the first backward node (len(nodes) if none): the nodes before it are the forward region."""
    return next((index for index, node in enumerate(graph.nodes) if node.provenance.role == "backward"),
                len(graph.nodes))


def saved_values(graph: Graph) -> set[int]:
    """Ids of the forward values (constants aside) that the nodes after the forward region read, recomputed nodes
    included: what a training step keeps alive from its forward pass to its backward pass."""
    end = forward_region_end(graph)
    forward = {node.output.id for node in graph.nodes[:end] if node.op != "constant"}
    return {value.id for node in graph.nodes[end:] for value in node.inputs if value.id in forward}


def saved_bytes(graph: Graph, plan: MemoryPlan) -> int:
    """Bytes of planned buffers the saved values hold (a view keeps its source: counted once)."""
    owners = {plan.liveness.owner[value_id] for value_id in saved_values(graph)}
    sizes = {node.output.id: node.output.type.nbytes for node in graph.nodes}
    return sum(sizes[owner] for owner in owners if plan.storage[owner].kind == "buffer")


def recomputed_nodes(graph: Graph) -> list[Node]:
    return [node for node in graph.nodes if node.provenance.role == RECOMPUTE]


def flops_of(nodes: Iterable[Node]) -> int:
    return sum(int(get_op(node.op).flops(node.output.type, [value.type for value in node.inputs], node.attrs))
               for node in nodes)


def format_bytes(count: int) -> str:
    """Bytes in MiB, or KiB below one MiB (a small model's plan)."""
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.1f} KiB"


def describe_rematerialization(before: Graph, before_plan: MemoryPlan, after: Graph, after_plan: MemoryPlan) -> str:
    """One line: saved activations, recomputed nodes and their FLOPs, and the planned peak, before and after."""
    recomputed = recomputed_nodes(after)
    extra, total = flops_of(recomputed), flops_of(before.nodes) or 1
    planned, planned_after = before_plan.planned_bytes, after_plan.planned_bytes
    return (f"rematerialisation: saved activations {format_bytes(saved_bytes(before, before_plan))} -> "
            f"{format_bytes(saved_bytes(after, after_plan))}; {len(recomputed)} nodes recomputed "
            f"({extra / 1e6:.1f} MFLOP, +{extra / total:.1%} FLOPs); planned peak {format_bytes(planned)} -> "
            f"{format_bytes(planned_after)} ({planned_after / max(planned, 1):.0%})")


def _category(node: Node, end: int, index: int, results: set[int]) -> str:
    if node.output.id in results:
        return "gradients and other results"
    role = node.provenance.role
    if index < end:
        return "saved activations"
    return {"recompute": "recomputed activations", "optimizer": "optimizer temporaries"}.get(
        role, "backward temporaries")


def peak_contents(graph: Graph, plan: MemoryPlan) -> str:
    """What fills a plan at its peak, by kind, largest first, and the largest value: 'at its peak 44.2 MiB are
    live: gradients and other results 19.0 MiB, ...; the largest %12 matmul f32[8,128,1024] at blocks.5.mlp
    (4.0 MiB)'."""
    timeline = plan.timeline(graph)
    end = forward_region_end(graph)
    position = {node.output.id: index for index, node in enumerate(graph.nodes)}
    results = {value.id for value in graph.results()}
    kinds: dict[str, int] = {}
    for node in timeline.alive_at_peak:
        kind = _category(node, end, position[node.output.id], results)
        kinds[kind] = kinds.get(kind, 0) + node.output.type.nbytes
    parts = ", ".join(f"{kind} {format_bytes(size)}"
                      for kind, size in sorted(kinds.items(), key=lambda item: -item[1]))
    largest = max(timeline.alive_at_peak, key=lambda node: node.output.type.nbytes, default=None)
    where = "" if largest is None else (f"; the largest {largest.output.label} {largest.op} {largest.output.type} "
                                        f"at {largest.provenance.module_path or '<top level>'} "
                                        f"({format_bytes(largest.output.type.nbytes)})")
    return (f"at its peak (step {timeline.peak_index} of {len(graph.nodes)}) {format_bytes(timeline.peak_bytes)} "
            f"are live: {parts or 'nothing'}{where}")
