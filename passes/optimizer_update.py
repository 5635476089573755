"""The optimizer's update as a pass: append to a training graph the nodes (role "optimizer") computing new
weights and new optimizer state from the gradients, written into the parameters after each run (graph updates).

The update rule itself is the optimizer's (graphgpt/optim.py writes it once with the op-building API, so the same
math runs eagerly on Tensors); this pass only wires it in: gradients are found by parameter name, optimizer state
becomes graph parameters named STATE_PREFIX + state name.

    step = append_update(backward.graph, backward.gradients, optimizer.update_rule())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graphgpt.ir import Graph, GraphBuilder, Provenance, TensorType, Value
from graphgpt.ir.symbolic import Emitter

from .rewrite import copied_results, copy_into

# Graph parameters holding optimizer state are named 'optimizer.<state name>' ('optimizer.exp_avg.lm_head.weight').
STATE_PREFIX = "optimizer."


@dataclass(frozen=True)
class UpdateRule:
    """An optimizer as the compiler sees it. `update(names, parameters, gradients, state)` takes the names of the
    parameters to update (some of `param_names`), handles (graph symbols here) for them and their gradients, in
    that order, and the state by name, and returns (new parameters, new state by name)."""

    name: str
    param_names: tuple[str, ...]
    state_types: dict[str, TensorType]
    update: Callable


def append_update(graph: Graph, gradients: dict[str, Value], rule: UpdateRule) -> Graph:
    """`graph` plus `rule`'s update of the parameters named in `gradients`, which maps each to the value of
    `graph` holding its gradient (as append_backward returns them, or a combine graph's inputs). A parameter of
    the rule without a gradient there (the loss never reaches it) is not updated, as in torch.optim."""
    unknown = [name for name in gradients if name not in rule.param_names]
    if unknown:
        raise ValueError(f"gradients of {unknown} were given to the {rule.name} update, which does not hold them")
    names = [name for name in rule.param_names if name in gradients]
    builder = GraphBuilder(header=f"append_update ({rule.name})")
    new_values = copy_into(graph, builder)
    state_values = {name: builder.add_param(STATE_PREFIX + name, state_type)
                    for name, state_type in rule.state_types.items()}
    emitter = Emitter(builder, Provenance(module_path=rule.name, role="optimizer"))
    outputs, updates = copied_results(graph, new_values)
    parameters = [emitter.symbol(new_values[graph.param(name).id]) for name in names]
    gradient_symbols = [emitter.symbol(new_values[gradients[name].id]) for name in names]
    state = {name: emitter.symbol(value) for name, value in state_values.items()}
    new_parameters, new_state = rule.update(names, parameters, gradient_symbols, state)
    updates += [(parameter.value, new.value) for parameter, new in zip(parameters, new_parameters)]
    updates += [(state_values[name], new.value) for name, new in new_state.items()]
    step = builder.finish(outputs, updates)
    # State the update neither reads nor writes is not bound: a parameter's own slots where the rule read the run's
    # joined vector, or the slots of a parameter the loss never reaches.
    used = {value.id for node in step.nodes for value in node.inputs} | {parameter.id for parameter, _ in updates}
    unused = {value.id for value in state_values.values() if value.id not in used}
    step.params = [value for value in step.params if value.id not in unused]
    return step
