"""The memory timeline of a compiled graph: bytes of live intermediate values after each step of the schedule,
and at the peak, the values holding most of it (with their op, module path and source line).

    timeline = memory_timeline(compiled.graph)
    print(timeline.describe()); open("memory.svg", "w").write(timeline.svg())
"""

from __future__ import annotations

from dataclasses import dataclass

from graphgpt.ir import Graph
from graphgpt.passes.analysis import last_uses
from graphgpt.passes.memory_plan import plan_memory

from .svg_chart import line_chart


@dataclass
class MemoryTimeline:
    live_bytes: list[int]        # after each node of the schedule
    peak_index: int
    culprits: list[tuple[str, int]]  # (description, bytes) of the largest values alive at the peak

    @property
    def peak_bytes(self) -> int:
        return self.live_bytes[self.peak_index] if self.live_bytes else 0

    def describe(self) -> str:
        lines = [f"peak {self.peak_bytes / 2**20:.2f} MiB live after step {self.peak_index} of "
                 f"{len(self.live_bytes)}; largest then:"]
        lines += [f"  {size / 2**20:8.2f} MiB  {what}" for what, size in self.culprits]
        return "\n".join(lines)

    def svg(self, title: str = "live intermediate values over the schedule") -> str:
        series = {"live MiB": [(index, size / 2**20) for index, size in enumerate(self.live_bytes)]}
        return line_chart(series, title, "step of the schedule", "MiB",
                          marker=(self.peak_index, f"peak {self.peak_bytes / 2**20:.1f} MiB"))


def memory_timeline(graph: Graph, culprits: int = 5) -> MemoryTimeline:
    """Bytes of planned buffers holding live values after each step: views and constants take none and keep
    their source alive; each value is freed after its last use (its views' included); results live to the end."""
    plan = plan_memory(graph)
    last = last_uses(graph)
    end: dict[int, int] = {}  # owning value id -> index of the last step reading it or a view of it
    owner: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        storage = plan.storage[node.output.id]
        owner[node.output.id] = storage.source if storage.kind == "view" else node.output.id
        root = owner[node.output.id]
        end[root] = max(end.get(root, index), last.get(node.output.id, index))
    alive: dict[int, object] = {}
    live_bytes, snapshot, peak, peak_index = [], {}, -1, 0
    for index, node in enumerate(graph.nodes):
        if plan.storage[node.output.id].kind == "buffer":
            alive[node.output.id] = node
        total = sum(n.output.type.nbytes for n in alive.values())
        live_bytes.append(total)
        if total > peak:
            peak, snapshot, peak_index = total, dict(alive), index
        for value_id in [v for v in alive if end.get(v, index) <= index]:
            del alive[value_id]
    largest = sorted(snapshot.values(), key=lambda n: n.output.type.nbytes, reverse=True)[:culprits]
    described = [(f"{node.output.label} {node.op} {node.output.type} at {node.provenance.describe()}",
                  node.output.type.nbytes) for node in largest]
    return MemoryTimeline(live_bytes, peak_index, described)
