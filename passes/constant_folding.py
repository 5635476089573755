"""Constant folding: a node whose inputs are all constants is evaluated once, at compile time, and becomes a
constant (the causal mask's arithmetic, products of scale factors, 1 - beta ** step when step is fixed).

Exact: the node is evaluated by its op's own kernel (OpDef.evaluate), on inputs laid out as the schedule would
lay them out, giving what the schedule would compute. A view of a constant (a transpose, slice, reshape or
broadcast) is not folded: it costs nothing at run time, and a constant made of it would be a compact copy laid
out unlike the view its readers see (BLAS and NumPy's reductions round by layout). Its readers fold from the view
itself.

Results larger than MAX_FOLDED_ELEMENTS are left to run: folding them would trade a cheap op for a large array
stored in the graph."""

from __future__ import annotations

from graphgpt.ir import Graph, get_op
from graphgpt.ir.dims import has_symbols

from .result import PassResult
from .rewrite import rewrite_nodes

MAX_FOLDED_ELEMENTS = 1 << 16


def fold_constants(graph: Graph) -> PassResult:
    """Evaluate constant subexpressions."""

    def evaluate_if_constant(node, inputs, context):
        if (node.op == "constant" or node.output.type.is_symbolic or has_symbols(list(node.attrs.values()))
                or node.output.type.size > MAX_FOLDED_ELEMENTS):
            return None  # a symbolic size (ir/dims.py) has no one array to fold into
        views = context.state.setdefault("views of constants", {})  # value id -> the view's array
        arrays = [views[value.id] if value.id in views else context.constant_value(value) for value in inputs]
        if any(array is None for array in arrays):
            return None
        op = get_op(node.op)
        result = op.evaluate(arrays, node.attrs)
        if op.view:
            views[node.output.id] = result  # the node stays, with the id it keeps
            return None
        return context.constant(result)

    new_graph, fired = rewrite_nodes(graph, [evaluate_if_constant], header="fold_constants")
    return PassResult(new_graph, {"nodes folded": fired["evaluate_if_constant"]})
