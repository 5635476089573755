"""The text form of a graph: one typed line per node, with its provenance as a trailing comment.

    # graph (traced)
    graph(%tokens:i64[2,8]) params(%token_embedding.weight:f32[65,32], ...) {
      %0:f32[2,8,32] = embedding %token_embedding.weight %tokens   # token_embedding  transformer.py:120
      ...
      return %57
    }
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from .types import TensorType

if TYPE_CHECKING:  # annotations only: graph.py imports this module to print itself, so no runtime import back
    from .graph import Graph, Node

# Constants with at most this many elements are printed in full; larger ones as a summary.
INLINE_CONSTANT_ELEMENTS = 8
COMMENT_COLUMN = 72


def format_attr(value) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= INLINE_CONSTANT_ELEMENTS:
            return np.array2string(value, separator=",").replace("\n", "").replace(" ", "")
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        low = value.min() if not finite.size else finite.min()
        high = value.max() if not finite.size else finite.max()
        extra = "" if finite.size == value.size else f" non-finite={value.size - finite.size}"
        return f"<{TensorType.of(value)} min={low:g} max={high:g}{extra}>"
    if isinstance(value, tuple):
        return "(" + ",".join(format_attr(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_node(node: Node, show_source: bool = True, note: str = "") -> str:
    """One node's line: `%v:type = op[attrs] operands`, then a comment with what differentiates it, its module
    path and source line, and `note` (e.g. the generated kernel that runs it)."""
    if node.op == "constant":
        head = "constant " + format_attr(node.attrs["value"])
    else:
        attrs = "[" + " ".join(f"{key}={format_attr(val)}" for key, val in node.attrs.items()) + "]"
        operands = " ".join(value.label for value in node.inputs)
        head = f"{node.op}{attrs if node.attrs else ''} {operands}".rstrip()
    line = f"{node.output.label}:{node.output.type} = {head}"
    where = []
    provenance = node.provenance
    if provenance.differentiates is not None:
        where.append(f"grad of %{provenance.differentiates}")
    if provenance.role == "recompute":  # a forward op the backward pass repeats (rematerialisation)
        where.append("recomputed")
    if provenance.module_path:
        where.append(provenance.module_path)
    if show_source and provenance.source:
        where.append(provenance.source)
    if note:
        where.append(note)
    if where:
        line = f"{line:<{COMMENT_COLUMN}} # " + "  ".join(where)
    return line


def format_graph(graph: Graph, show_source: bool = True, notes: Optional[dict[int, str]] = None) -> str:
    """The whole graph as text; `show_source=False` drops file:line comments (for goldens that outlive edits);
    `notes` adds a comment to the lines of some nodes, by output value id."""
    inputs = ", ".join(repr(value) for value in graph.inputs)
    lines = [f"# graph ({graph.header})", f"graph({inputs})"]
    if graph.params:
        lines.append("params(")
        lines.extend(f"    {value!r}," for value in graph.params)
        lines.append(")")
    lines.append("{")
    notes = notes or {}
    lines.extend("  " + format_node(node, show_source, notes.get(node.output.id, "")) for node in graph.nodes)
    lines.extend(f"  update {parameter.label} <- {value.label}" for parameter, value in graph.updates)
    lines.append("  return " + ", ".join(value.label for value in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
