"""Specialisation: a graph traced with symbolic sizes (ir/dims.py: f32[B,T,64]) made concrete for one batch and
length (f32[8,16,64]), so the memory plan and the schedule, which need numbers, can be made for it.

The symbolic graph is traced and optimised once; specialising it is one walk over its nodes, substituting sizes
into the types and into the attributes that restate shapes (a reshape's target, a slice's bounds), with every
node's type rule run again on the way, so the result is checked as a traced graph is.

    sizes, problem = bind_sizes(graph.inputs, arrays)     # {'B': 8, 'T': 16}, or why these arrays do not fit
    concrete = specialize_graph(graph, sizes)
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, GraphBuilder, ShapeError, TensorType, Value, get_op
from graphgpt.ir.dims import Dim, substitute


def is_symbolic_graph(graph: Graph) -> bool:
    return any(value.type.is_symbolic for value in (*graph.inputs, *graph.params))  or any(
        node.output.type.is_symbolic for node in graph.nodes)


def symbols_of(values: Sequence[Value]) -> list[str]:
    """The symbols of these values' types, in the order they first appear."""
    names: list[str] = []
    for value in values:
        for dim in value.type.shape:
            if isinstance(dim, Dim):
                names.extend(name for name in sorted(dim.symbols) if name not in names)
    return names


def specialize_type(type: TensorType, sizes: Mapping[str, int]) -> TensorType:
    if not type.is_symbolic:
        return type
    return TensorType(tuple(substitute(dim, sizes) for dim in type.shape), type.dtype)


def describe_sizes(sizes: Mapping[str, int]) -> str:
    """'B=8, T=16'."""
    return ", ".join(f"{name}={size}" for name, size in sizes.items())


def bind_sizes(inputs: Sequence[Value], arrays: Sequence[np.ndarray]) -> tuple[dict[str, int], Optional[str]]:
    """The size of every symbol of the inputs' types, read from arrays of those inputs, or (partial sizes, why
    they do not fit in one line: `input 0 'tokens' changed i64[B,T] -> i64[2,3,4]`)."""
    sizes: dict[str, int] = {}
    if len(arrays) != len(inputs):
        signature = ", ".join(f"{value.name}: {value.type}" for value in inputs)
        return sizes, f"compiled graph takes {len(inputs)} input(s) ({signature}), got {len(arrays)}"
    for position, (value, array) in enumerate(zip(inputs, arrays)):
        try:
            got = TensorType.of(array)
        except ShapeError:
            return sizes, f"input {position} {value.name!r} changed {value.type} -> an array of dtype {array.dtype}"
        changed = f"input {position} {value.name!r} changed {value.type} -> {got}"
        if got.dtype != value.type.dtype or got.rank != value.type.rank:
            return sizes, changed
        for axis, (dim, size) in enumerate(zip(value.type.shape, got.shape)):
            if not isinstance(dim, Dim):
                if dim != size:
                    return sizes, changed
                continue
            (name,) = dim.symbols  # an input's symbolic size is one symbol (compile makes them so)
            if name in sizes and sizes[name] != size:
                return sizes, (f"input {position} {value.name!r} axis {axis} is {size}, but {name} is "
                               f"{sizes[name]} in an earlier input")
            if size < 1:
                return sizes, f"{changed}: a symbolic size is at least 1"
            sizes[name] = size
    return sizes, None


def specialize_graph(graph: Graph, sizes: Mapping[str, int], header: Optional[str] = None) -> Graph:
    """`graph` with every symbol of `sizes` replaced by its size; value ids, names and provenance kept."""
    builder = GraphBuilder(header=header or f"{graph.header}, at {describe_sizes(sizes)}")
    mapped: dict[int, Value] = {}
    for value in graph.inputs:
        mapped[value.id] = builder.add_input(value.name, specialize_type(value.type, sizes), value.id)
    for value in graph.params:
        mapped[value.id] = builder.add_param(value.name, specialize_type(value.type, sizes), value.id)
    for node in graph.nodes:
        op = get_op(node.op)
        attrs = {name: op.attrs[name].substitute(attr, sizes) for name, attr in node.attrs.items()}
        try:
            mapped[node.output.id] = builder.add_node(node.op, [mapped[value.id] for value in node.inputs], attrs,
                                                      node.provenance, node.output.id)
        except ShapeError as error:
            raise ShapeError(f"at {describe_sizes(sizes)}, {node.describe()}: {error}") from None
    updates = [(mapped[parameter.id], mapped[new.id]) for parameter, new in graph.updates]
    return builder.finish([mapped[value.id] for value in graph.outputs], updates)
