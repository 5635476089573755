"""Helpers shared by every pass that rebuilds a graph.

- `copy_into` re-adds a graph's values and nodes to a GraphBuilder, keeping their ids.
- `rewrite_nodes` is the one engine for local rewrites: it walks the nodes in order and offers each to a table of
  rules; a rule either returns a replacement value (built with the RewriteContext) or None to leave the node as
  it is. Kept nodes keep their ids, so a pass's report can say exactly what it created and removed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, GraphBuilder, Node, Provenance, ShapeError, TensorType, Value


def _max_id(graph: Graph) -> int:
    return max((value.id for value in graph.values()), default=-1)


def copy_leaves(graph: Graph, builder: GraphBuilder,
                input_types: Optional[Sequence[TensorType]] = None) -> dict[int, Value]:
    """Re-add the inputs and parameters of `graph` to `builder` with their ids; returns old id -> new Value."""
    if input_types is not None and len(input_types) != len(graph.inputs):
        raise ShapeError(f"graph has {len(graph.inputs)} inputs, got {len(input_types)} input types")
    builder.reserve_ids(_max_id(graph) + 1)
    new_values: dict[int, Value] = {}
    for position, value in enumerate(graph.inputs):
        new_type = input_types[position] if input_types is not None else value.type
        new_values[value.id] = builder.add_input(value.name, new_type, value_id=value.id)
    for value in graph.params:
        new_values[value.id] = builder.add_param(value.name, value.type, value_id=value.id)
    return new_values


def copy_into(graph: Graph, builder: GraphBuilder,
              input_types: Optional[Sequence[TensorType]] = None) -> dict[int, Value]:
    """Re-add every input, parameter and node of `graph` to `builder` (re-running each op's type rule), in the
    same order and with the same ids. Returns old value id -> new Value."""
    new_values = copy_leaves(graph, builder, input_types)
    for node in graph.nodes:
        inputs = [new_values[value.id] for value in node.inputs]
        new_values[node.output.id] = builder.add_node(node.op, inputs, node.attrs, node.provenance,
                                                      value_id=node.output.id)
    return new_values


def copied_results(graph: Graph, new_values: dict[int, Value]) -> tuple[list[Value], list[tuple[Value, Value]]]:
    """`graph`'s outputs and updates, mapped into the copy made by copy_into (for builder.finish)."""
    outputs = [new_values[value.id] for value in graph.outputs]
    updates = [(new_values[parameter.id], new_values[value.id]) for parameter, value in graph.updates]
    return outputs, updates


class RewriteContext:
    """What a rewrite rule may use: emit new nodes (stamped with the provenance of the node being rewritten) and
    look at constant values."""

    def __init__(self, builder: GraphBuilder, new_values: dict[int, Value]):
        self.builder = builder
        self.new_values = new_values  # old value id -> its value in the graph being built
        self.provenance = Provenance()
        self.state: dict[str, Any] = {}  # per-pass memory for rules that need it (common subexpressions)

    def mapped(self, old: Value) -> Value:
        """The value standing for `old` (a value of the input graph) in the graph being built."""
        return self.new_values[old.id]

    def emit(self, op: str, inputs: Sequence[Value], attrs: Optional[dict] = None) -> Value:
        return self.builder.add_node(op, inputs, attrs or {}, self.provenance)

    def constant(self, array: np.ndarray) -> Value:
        return self.builder.add_constant(array, self.provenance)

    @staticmethod
    def constant_value(value: Value) -> Optional[np.ndarray]:
        """The array of a value made by a `constant` node, else None."""
        producer = value.producer
        return producer.attrs["value"] if producer is not None and producer.op == "constant" else None


# A rule: (node, its inputs in the new graph, context) -> replacement value, or None to keep the node.
RewriteRule = Callable[[Node, list[Value], RewriteContext], Optional[Value]]


def rewrite_nodes(graph: Graph, rules: Sequence[RewriteRule], header: str) -> tuple[Graph, Counter]:
    """One sweep of `rules` over `graph`; returns the new graph and how often each rule fired (by name)."""
    builder = GraphBuilder(header=header)
    new_values = copy_leaves(graph, builder)
    context = RewriteContext(builder, new_values)
    fired: Counter = Counter()
    for node in graph.nodes:
        inputs = [new_values[value.id] for value in node.inputs]
        context.provenance = node.provenance
        for rule in rules:
            first_new_id = builder.next_id
            replacement = rule(node, inputs, context)
            if replacement is not None:
                if replacement.id >= first_new_id:  # made by this rule: it is the rewritten value
                    builder.renumber(replacement, node.output.id)
                if replacement.type != node.output.type:
                    raise ShapeError(f"rewrite rule {rule.__name__} replaced {node.describe()} ({node.output.type}) "
                                     f"with a value of type {replacement.type}")
                new_values[node.output.id] = replacement
                fired[rule.__name__] += 1
                break
        else:
            new_values[node.output.id] = builder.add_node(node.op, inputs, node.attrs, node.provenance,
                                                          value_id=node.output.id)
    return builder.finish(*copied_results(graph, new_values)), fired
