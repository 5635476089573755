"""The graph: SSA values, op nodes with provenance, and the Graph that holds inputs, parameters, nodes and outputs.

A graph is built once (by ir.builder.GraphBuilder) and then treated as immutable: passes build new graphs.
Every value is defined exactly once: by a graph input, a named parameter, or the single output of one node.
Constants are nodes of the `constant` op, so they print, serialise and fold like any other node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .printer import format_graph
from .types import TensorType


# What part of a program a node belongs to: the model and loss as traced, the generated backward pass, the
# optimizer's update, the data-parallel combination of shards, or a forward op the backward pass repeats
# (rematerialisation, passes/rematerialize.py).
ROLES = ("forward", "backward", "optimizer", "combine", "recompute")


@dataclass(frozen=True)
class Provenance:
    """Where a node came from: the module path that made it, the user's source line, its role (ROLES), and for a
    backward node the id of the forward node it differentiates."""

    module_path: str = ""
    filename: str = ""
    lineno: int = 0
    differentiates: Optional[int] = None
    role: str = "forward"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"provenance role must be one of {ROLES}, got {self.role!r}")

    @property
    def source(self) -> str:
        """'file.py:88', or '' when unknown."""
        if not self.filename:
            return ""
        return f"{os.path.basename(self.filename)}:{self.lineno}"

    def describe(self) -> str:
        """Human-readable location used in error messages: 'blocks.0.mlp (transformer.py:88)'."""
        parts = [self.module_path or "<top level>"]
        if self.filename:
            parts.append(f"({self.filename}:{self.lineno})")
        return " ".join(parts)


class Value:
    """An SSA value: defined once, typed. `kind` says what defines it: 'input', 'param' or 'node'."""

    __slots__ = ("id", "type", "kind", "name", "producer")

    def __init__(self, id: int, type: TensorType, kind: str, name: str = "", producer: "Node | None" = None):
        self.id = id
        self.type = type
        self.kind = kind
        self.name = name
        self.producer = producer

    @property
    def label(self) -> str:
        """How the text IR names this value: %tokens, %blocks.0.ln1.gamma, %12."""
        return f"%{self.name}" if self.name else f"%{self.id}"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"{self.label}:{self.type}"


class Node:
    """One op application: `output = op[attrs](*inputs)`."""

    __slots__ = ("op", "inputs", "attrs", "output", "provenance")

    def __init__(self, op: str, inputs: tuple[Value, ...], attrs: dict[str, Any], output: Value,
                 provenance: Provenance):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.output = output
        self.provenance = provenance

    @property
    def id(self) -> int:
        return self.output.id

    def describe(self) -> str:
        """'node %12 (matmul) at blocks.0.attention.q_proj (transformer.py:88)', for error messages."""
        return f"node {self.output.label} ({self.op}) at {self.provenance.describe()}"

    def __repr__(self) -> str:
        return f"Node({self.output!r} = {self.op} {' '.join(v.label for v in self.inputs)})"


@dataclass
class Graph:
    """A whole program: runtime inputs, named parameters, nodes in topological order, outputs, and updates.

    `updates` are (parameter, new value) pairs: after a run, each new value is written into its parameter in
    place (an optimizer step's new weights and state). `header` records which pass produced this graph (shown by
    the printer, as Lightning Thunder does).
    """

    inputs: list[Value] = field(default_factory=list)
    params: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    header: str = "traced"
    updates: list[tuple[Value, Value]] = field(default_factory=list)

    def values(self) -> Iterator[Value]:
        """Every value in definition order: inputs, parameters, then node outputs."""
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield node.output

    def param(self, name: str) -> Value:
        for value in self.params:
            if value.name == name:
                return value
        raise KeyError(f"graph has no parameter named {name!r}")

    def results(self) -> list[Value]:
        """Every value the graph must produce: its outputs and the new values of its updates."""
        return list(self.outputs) + [new for _, new in self.updates]

    def users(self) -> dict[int, list[Node]]:
        """Map from value id to the nodes that read it."""
        users: dict[int, list[Node]] = {value.id: [] for value in self.values()}
        for node in self.nodes:
            for value in node.inputs:
                users.setdefault(value.id, []).append(node)
        return users

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def to_networkx(self):
        """A networkx.DiGraph of value ids (edges run from each input to the node that reads it), for the graph
        algorithms networkx already does well: cycles, reachability, dominators."""
        import networkx as nx

        digraph = nx.DiGraph()
        for value in self.values():
            digraph.add_node(value.id)
        for node in self.nodes:
            for value in node.inputs:
                digraph.add_edge(value.id, node.output.id)
        return digraph

    def __str__(self) -> str:
        return format_graph(self)
