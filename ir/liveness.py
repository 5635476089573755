"""Liveness: when each value's memory is in use. The one analysis behind the memory plan (which buffers may be
reused), the schedule's plan, the report's live-bytes figure, the memory timeline, and a fused elementwise
kernel's scratch blocks (which instruction results may share one).

`last_reads` is its core: for steps in order, each reading some values, the last step reading each value.

A view shares its source's memory, so liveness is kept per memory owner: the owner of a value is the value whose
memory it lives in (itself, or its view chain's source). An owner is live from the node that makes it to the last
node reading it or any view of it; the graph's results (outputs and update values) live to the end.

    liveness = analyze_liveness(graph, owner)           # owner: value id -> owning value id (memory_plan decides)
    timeline = live_timeline(graph, liveness, counted)  # bytes alive after each step, and who holds the peak
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Iterable

if TYPE_CHECKING:  # annotations only: the graph module needs nothing from here
    from .graph import Graph, Node


def last_reads(reads: Iterable[Iterable[Hashable]]) -> dict[Hashable, int]:
    """For steps in order, each given as the values it reads: value -> index of the last step reading it."""
    last: dict[Hashable, int] = {}
    for index, values in enumerate(reads):
        for value in values:
            last[value] = index
    return last


@dataclass(frozen=True)
class Liveness:
    owner: dict[int, int]      # value id -> id of the value owning its memory
    last_use: dict[int, int]   # owner id -> index of the last node reading it or a view of it; results: len(nodes)

    def end(self, value_id: int, made_at: int) -> int:
        """Index of the last step at which `value_id`'s memory is needed (the step making it if nobody reads it)."""
        return self.last_use.get(self.owner[value_id], made_at)


def analyze_liveness(graph: Graph, owner: dict[int, int]) -> Liveness:
    last_use = last_reads([owner[value.id] for value in node.inputs] for node in graph.nodes)
    for value in graph.results():
        last_use[owner[value.id]] = len(graph.nodes)
    return Liveness(owner, last_use)


@dataclass(frozen=True)
class LiveTimeline:
    live_bytes: list[int]        # bytes of counted values alive after each step
    peak_index: int
    alive_at_peak: list[Node]    # the nodes whose values are alive at the peak

    @property
    def peak_bytes(self) -> int:
        return self.live_bytes[self.peak_index] if self.live_bytes else 0


def live_timeline(graph: Graph, liveness: Liveness, counted: Callable[[Node], bool]) -> LiveTimeline:
    """Bytes of the values `counted` holds true for (those owning memory of their own) alive after each step."""
    alive: dict[int, Node] = {}
    live_bytes: list[int] = []
    peak, peak_index, at_peak = -1, 0, []
    total = 0
    for index, node in enumerate(graph.nodes):
        if counted(node):
            alive[node.output.id] = node
            total += node.output.type.nbytes
        live_bytes.append(total)
        if total > peak:
            peak, peak_index, at_peak = total, index, list(alive.values())
        for value_id in [value_id for value_id, owner in alive.items() if liveness.end(value_id, index) <= index]:
            total -= alive.pop(value_id).output.type.nbytes
    return LiveTimeline(live_bytes, peak_index, at_peak)
