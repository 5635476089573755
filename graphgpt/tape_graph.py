"""The eager tape of one step as a graph: the operations `loss.backward()` walks, in the order they ran, made into an
ir.Graph so that render.py draws the dynamic graph of a step exactly as it draws a traced one, and the two can be
laid side by side.

    loss = F.cross_entropy(model(Tensor(tokens)), Tensor(targets))
    graph = tape_graph(loss, dict(model.named_parameters()), {"tokens": tokens_tensor}, like=traced.graph)
    render_graph(graph, "tape.svg", title="eager tape")

The tape records only operations on tensors that need gradients; the tensors it read without recording them are
the step's inputs (named by the caller) or constants (a mask made from NumPy), as a trace would make them. The tape
keeps no module path or source line per operation; `like`, a trace of the same step, lends its nodes' provenance
where the tape's operations follow the trace's in order (they do for one model and batch: both run the same
forward code), so the drawing groups the tape by module as the static graph is grouped.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from graphgpt.ir import Graph, GraphBuilder, Provenance
from graphgpt.ir.chain_rule import Application

from .tensor import Tensor


def tape_graph(loss: Tensor, parameters: Mapping[str, Tensor], inputs: Mapping[str, Tensor] = None,
               like: Optional[Graph] = None) -> Graph:
    """The graph of the operations `loss` was computed by on the eager tape (header 'eager tape'): `parameters`
    and `inputs` name the leaves it read, anything else it read unrecorded becomes a constant."""
    tape, _ = loss._tape()
    builder = GraphBuilder(header="eager tape")
    names = {id(tensor): name for name, tensor in parameters.items()}
    input_names = {id(tensor): name for name, tensor in (inputs or {}).items()}
    values = {}

    def value_of(tensor: Tensor):
        if id(tensor) not in values:
            if id(tensor) in names:
                values[id(tensor)] = builder.add_param(names[id(tensor)], tensor.type)
            elif id(tensor) in input_names:
                values[id(tensor)] = builder.add_input(input_names[id(tensor)], tensor.type)
            else:
                values[id(tensor)] = builder.add_constant(tensor.data)
        return values[id(tensor)]

    for application, provenance in zip(tape, _provenance(tape, like)):
        operands = [value_of(tensor) for tensor in application.inputs]
        values[id(application.output)] = builder.add_node(application.op, operands, application.attrs, provenance)
    return builder.finish([values[id(loss)]])


def _provenance(tape: Sequence[Application], like: Optional[Graph]) -> list[Provenance]:
    """Each tape entry's module path and source line, from the forward nodes of `like` matched in order (same op,
    same shape; the trace also holds what the tape did not record, which is skipped); unknown for every entry
    if they do not all match."""
    unknown = [Provenance()] * len(tape)
    if like is None:
        return unknown
    forward = [node for node in like.nodes if node.provenance.role == "forward" and node.op != "constant"]
    matched, position = [], 0
    for application in tape:
        while position < len(forward) and (forward[position].op != application.op or
                                           forward[position].output.type.shape != application.output.type.shape):
            position += 1
        if position == len(forward):
            return unknown
        matched.append(forward[position].provenance)
        position += 1
    return matched
