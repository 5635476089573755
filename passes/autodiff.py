"""Reverse-mode gradient graph generation: append to a graph the backward nodes that compute the gradient of a
scalar loss with respect to chosen parameters (or inputs).

The backward pass is IR like the forward pass: printable, optimisable, drawable. Every backward node's provenance
names the forward node it differentiates (`differentiates`) and that node's module path and source line.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, GraphBuilder, GraphError, Provenance, Value
from graphgpt.ir.chain_rule import Application, backpropagate
from graphgpt.ir.symbolic import Emitter

from .rewrite import copied_results, copy_into


class Backward(NamedTuple):
    """A graph with its backward pass appended, and which of its values is the gradient of each name asked for
    (parameter or input names): passes that consume gradients (the optimizer's update) look them up by name.
    `unreached` names those the loss does not depend on (their gradient is a constant zero)."""

    graph: Graph
    gradients: dict[str, Value]
    unreached: frozenset[str] = frozenset()

    def reached_gradients(self) -> dict[str, Value]:
        """The gradients of the names the loss depends on: what an optimizer updates (torch.optim leaves a
        parameter without a gradient alone)."""
        return {name: value for name, value in self.gradients.items() if name not in self.unreached}


def append_backward(graph: Graph, wrt: Sequence[str], loss: Optional[Value] = None) -> Backward:
    """`graph`'s nodes, then the backward nodes (role "backward"). The new graph's outputs are `graph`'s outputs
    followed by the gradients, one per name in `wrt` in that order, so running it returns them; `gradients`
    names them.

    `loss` defaults to the graph's first output and must be a float scalar.

    >>> train = append_backward(forward_and_loss, wrt=[v.name for v in forward_and_loss.params])  # doctest: +SKIP
    >>> train.gradients["lm_head.weight"]                                                       # doctest: +SKIP
    """
    backward, _ = append_backward_with_map(graph, wrt, loss)
    return backward


def append_backward_with_map(graph: Graph, wrt: Sequence[str],
                             loss: Optional[Value] = None) -> tuple[Backward, dict[int, Value]]:
    """append_backward, also returning which value of the new graph holds the complete gradient of each
    intermediate forward value (by forward value id), for tools that check the backward pass node by node."""
    loss = graph.outputs[0] if loss is None else loss
    if loss.type.shape != () or not loss.type.is_float:
        raise GraphError(f"the loss must be a float scalar, got {loss.type}; reduce it (e.g. .mean()) first")
    leaves = {value.name: value for value in (*graph.inputs, *graph.params)}
    unknown = [name for name in wrt if name not in leaves]
    if unknown:
        raise GraphError(f"cannot differentiate with respect to {unknown}: not inputs or parameters of the graph "
                         f"(they are {sorted(leaves)})")
    not_float = [f"{name}: {leaves[name].type}" for name in wrt if not leaves[name].type.is_float]
    if not_float:
        raise GraphError(f"only float values have gradients; got {not_float}")

    builder = GraphBuilder(header="append_backward")
    new_values = copy_into(graph, builder)
    emitter = Emitter(builder)
    symbol = {value_id: emitter.symbol(value) for value_id, value in new_values.items()}

    applications = [Application(node.op, node.attrs, tuple(symbol[v.id] for v in node.inputs),
                                symbol[node.output.id], origin=node) for node in graph.nodes]

    def stamp(application: Application) -> None:
        forward = application.origin.provenance
        emitter.provenance = Provenance(forward.module_path, forward.filename, forward.lineno,
                                        differentiates=application.origin.output.id, role="backward")

    loss_symbol = symbol[loss.id]
    emitter.provenance = Provenance(differentiates=loss.id, role="backward")
    seed_value = loss_symbol._lift(np.ones((), loss.type.numpy_dtype))
    wrt_symbols = [symbol[leaves[name].id] for name in wrt]
    intermediate_gradients: dict[int, Value] = {}
    gradients = backpropagate(applications, loss_symbol, seed_value, wrt_symbols, key=lambda s: s.value.id,
                              on_rule=stamp,
                              on_final=lambda value_id, g: intermediate_gradients.__setitem__(value_id, g.value))

    outputs, updates = copied_results(graph, new_values)
    named: dict[str, Value] = {}
    unreached = set()
    for name, wrt_symbol in zip(wrt, wrt_symbols):
        gradient = gradients.get(wrt_symbol.value.id)
        if gradient is None:  # the loss does not depend on it: its gradient is zero
            unreached.add(name)
            emitter.provenance = Provenance(module_path=name.rpartition(".")[0], role="backward")
            gradient = wrt_symbol._lift(np.zeros(wrt_symbol.shape, wrt_symbol.type.numpy_dtype))
        outputs.append(gradient.value)
        named[name] = gradient.value
    return Backward(builder.finish(outputs, updates), named, frozenset(unreached)), intermediate_gradients
