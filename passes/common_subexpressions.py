"""Common-subexpression elimination: a node computing the same op, with the same attributes, on the same inputs
as an earlier node is replaced by that node's value. Equal constants are merged too (the scale 1/sqrt(d) of
every attention layer, the 1.0 of every gradient rule).

Exact: every op is deterministic, so the earlier node holds the very bits the later one would compute, in the
same layout. Constants merge only when equal bit for bit and laid out alike (see _attribute_key)."""

from __future__ import annotations

import hashlib

import numpy as np

from graphgpt.ir import Graph

from .result import PassResult
from .rewrite import rewrite_nodes


def _attribute_key(value):
    if isinstance(value, np.ndarray):
        # Bytes, not values: 0.0 and -0.0 must stay apart, and two equal NaN constants may merge. Strides too: a
        # Fortran-ordered constant read by a matmul or a reduction rounds unlike a C-ordered one of equal values.
        return ("array", value.dtype.str, value.shape, value.strides, hashlib.sha1(value.tobytes()).digest())
    if isinstance(value, tuple):
        return tuple(_attribute_key(item) for item in value)
    return (type(value).__name__, value)


def eliminate_common_subexpressions(graph: Graph) -> PassResult:
    """Merge nodes that compute the same thing."""

    def reuse_earlier_identical_node(node, inputs, context):
        key = (node.op, tuple(value.id for value in inputs),
               tuple((name, _attribute_key(value)) for name, value in sorted(node.attrs.items())))
        seen = context.state.setdefault("seen", {})
        if key not in seen:
            seen[key] = context.builder.add_node(node.op, inputs, node.attrs, node.provenance,
                                                 value_id=node.output.id)
        return seen[key]

    new_graph, _ = rewrite_nodes(graph, [reuse_earlier_identical_node], header="eliminate_common_subexpressions")
    return PassResult(new_graph, {"nodes merged": len(graph.nodes) - len(new_graph.nodes)})
