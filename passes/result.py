"""PassResult: what every optimisation pass returns, its new graph and a summary of what it changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from graphgpt.ir import Graph


@dataclass
class PassResult:
    graph: Graph
    summary: dict[str, int] = field(default_factory=dict)  # e.g. {"nodes removed": 12}
