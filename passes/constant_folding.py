"""Constant folding: a node whose inputs are all constants is evaluated once, at compile time, and becomes a
constant (the causal mask's arithmetic, products of scale factors, 1 - beta ** step when step is fixed).

Results larger than MAX_FOLDED_ELEMENTS are left to run: folding them would trade a cheap op for a large array
stored in the graph."""

from __future__ import annotations

from graphgpt.ir import Graph, get_op

from .result import PassResult
from .rewrite import rewrite_nodes

MAX_FOLDED_ELEMENTS = 1 << 16


def fold_constants(graph: Graph) -> PassResult:
    """Evaluate constant subexpressions."""

    def evaluate_if_constant(node, inputs, context):
        if node.op == "constant" or node.output.type.size > MAX_FOLDED_ELEMENTS:
            return None
        arrays = [context.constant_value(value) for value in inputs]
        if any(array is None for array in arrays):
            return None
        return context.constant(get_op(node.op).evaluate(arrays, node.attrs))

    new_graph, fired = rewrite_nodes(graph, [evaluate_if_constant], header="fold_constants")
    return PassResult(new_graph, {"nodes folded": fired["evaluate_if_constant"]})
