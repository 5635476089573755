"""The memory timeline of a compiled graph: bytes of live intermediate values after each step of the schedule,
and at the peak, the values holding most of it (with their op, module path and source line). A rematerialised
graph's timeline carries the plan without rematerialisation beside it (`without_remat`), drawn as a second line.

    timeline = memory_timeline(compiled.graph)
    print(timeline.describe()); open("memory.svg", "w").write(timeline.svg())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from graphgpt.ir import Graph
from graphgpt.passes.memory_plan import MemoryPlan, plan_memory
from graphgpt.passes.program import REMATERIALIZE, ProgramGraph

from .svg_chart import line_chart


@dataclass
class MemoryTimeline:
    live_bytes: list[int]        # after each node of the schedule
    peak_index: int
    culprits: list[tuple[str, int]]  # (description, bytes) of the largest values alive at the peak
    without_remat: Optional[list[int]] = None  # live bytes after each step of the graph before rematerialisation

    @property
    def peak_bytes(self) -> int:
        return self.live_bytes[self.peak_index] if self.live_bytes else 0

    def describe(self) -> str:
        lines = [f"peak {self.peak_bytes / 2**20:.2f} MiB live after step {self.peak_index} of "
                 f"{len(self.live_bytes)}; largest then:"]
        lines += [f"  {size / 2**20:8.2f} MiB  {what}" for what, size in self.culprits]
        if self.without_remat:
            lines.append(f"without rematerialisation: peak {max(self.without_remat) / 2**20:.2f} MiB live")
        return "\n".join(lines)

    def svg(self, title: str = "live intermediate values over the schedule",
            planned_bytes: Optional[int] = None) -> str:
        """The live bytes as a line with the peak marked, in the MiB (two decimals) describe() gives; with
        `planned_bytes`, the plan's total allocation drawn as a dashed level."""
        series = {"live MiB": [(index, size / 2**20) for index, size in enumerate(self.live_bytes)]}
        if self.without_remat:
            series = {"live MiB, rematerialised": series["live MiB"],
                      "live MiB, without": [(index, size / 2**20) for index, size in enumerate(self.without_remat)]}
        level = None if planned_bytes is None else (planned_bytes / 2**20,
                                                    f"planned buffers {planned_bytes / 2**20:.2f} MiB")
        return line_chart(series, title, "step of the schedule", "MiB",
                          marker=(self.peak_index, f"peak {self.peak_bytes / 2**20:.2f} MiB"), level=level)


def memory_timeline(graph: Graph, plan: Optional[MemoryPlan] = None, culprits: int = 5) -> MemoryTimeline:
    """Bytes of planned buffers holding live values after each step (passes/liveness.py: views and constants
    take none and keep their source alive; results live to the end), from `plan` (the schedule's) or a new one."""
    timeline = (plan or plan_memory(graph)).timeline(graph)
    largest = sorted(timeline.alive_at_peak, key=lambda n: n.output.type.nbytes, reverse=True)[:culprits]
    described = [(f"{node.output.label} {node.op} {node.output.type} at {node.provenance.describe()}",
                  node.output.type.nbytes) for node in largest]
    return MemoryTimeline(timeline.live_bytes, timeline.peak_index, described)


def program_graph_timeline(entry: ProgramGraph) -> MemoryTimeline:
    """The timeline of one graph of a program, from the plan its schedule runs over; after rematerialisation,
    with the live bytes of the plan before it."""
    timeline = memory_timeline(entry.graph, entry.plan)
    if entry.stages[-1].name == REMATERIALIZE and len(entry.stages) > 1:
        before = entry.stages[-2]
        timeline.without_remat = before.plan.timeline(before.graph).live_bytes
    return timeline
