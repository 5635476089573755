"""Where every value of a graph sits in the explorer's hierarchy of boxes.

A box is a tuple of names from the top: ('blocks.0', 'attention', 'q_proj'). Forward nodes sit in the boxes of
their module path (a ModuleList's index joins its name: 'blocks.0', not 'blocks' > '0'). The backward pass of a
top-level module is a box of its own beside it, never inside it: ('blocks.0 backward', 'attention'), found from the
forward node each backward node differentiates. The loss (the forward ops after the model, outside every module)
is the box 'loss'; the optimizer's update is 'optimizer', one box per top-level module and one per parameter
inside it; a data-parallel combine is 'combine'. Parameters sit in the module that owns them, optimizer state with
the parameter it belongs to; graph inputs and the model's own ops (the embedding sum) at the top.

    boxes = box_paths(graph)            # value id -> ('blocks.0 backward', 'mlp')
"""

from __future__ import annotations

from typing import Iterable

from graphgpt.ir import Graph, Node
from graphgpt.passes.optimizer_update import STATE_PREFIX

BACKWARD = " backward"  # a top-level backward box is its forward box's name and this
LOSS, OPTIMIZER, COMBINE = "loss", "optimizer", "combine"
TOP_LEVEL_BACKWARD = "backward"  # the backward of the model's own top-level ops (no module of their own)

Box = tuple[str, ...]


def module_parts(path: str) -> Box:
    """'blocks.0.attention.q_proj' -> ('blocks.0', 'attention', 'q_proj'): a numeric part (a ModuleList's index)
    joins the name before it, so blocks are boxes side by side, not children of one 'blocks' box."""
    parts: list[str] = []
    for part in (part for part in path.split(".") if part):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}.{part}"
        else:
            parts.append(part)
    return tuple(parts)


def backward_box(forward: Box) -> Box:
    """The box of the backward pass of forward box `forward`: ('blocks.0', 'mlp') -> ('blocks.0 backward', 'mlp')."""
    if not forward:
        return (TOP_LEVEL_BACKWARD,)
    return (forward[0] + BACKWARD, *forward[1:])


def loss_nodes(graph: Graph) -> set[int]:
    """Ids of the forward ops outside every module that follow the model and feed no module: the loss."""
    forward = [node for node in graph.nodes if node.provenance.role == "forward"]
    in_module = {node.output.id for node in forward if node.provenance.module_path}
    downstream: set[int] = set()  # reached from a module's node
    for node in forward:
        if node.output.id in in_module or any(value.id in in_module or value.id in downstream
                                             for value in node.inputs):
            downstream.add(node.output.id)
    feeds_module: set[int] = set()  # read, directly or not, by a module's node
    for node in reversed(forward):
        if node.output.id in in_module or node.output.id in feeds_module:
            feeds_module.update(value.id for value in node.inputs)
    return {node.output.id for node in forward if not node.provenance.module_path
            and node.output.id in downstream and node.output.id not in feeds_module}


def _trained_parameter(state_name: str, trained: set[str]) -> str:
    """The parameter an optimizer state belongs to: 'optimizer.exp_avg.blocks.0.ln1.gamma' -> 'blocks.0.ln1.gamma'
    ('' for state shared by all, such as the step count)."""
    if state_name in trained:
        return state_name
    rest = state_name[len(STATE_PREFIX):] if state_name.startswith(STATE_PREFIX) else state_name
    parameter = rest.partition(".")[2]
    return parameter if parameter in trained else ""


def parameter_box(name: str) -> Box:
    """The optimizer's box for one parameter: ('optimizer', 'blocks.0', 'attention.q_proj.weight')."""
    parts = module_parts(name)
    if len(parts) < 2:
        return (OPTIMIZER, name)
    return (OPTIMIZER, parts[0], name[len(parts[0]) + 1:])


def _optimizer_boxes(graph: Graph) -> dict[int, Box]:
    """Each optimizer node in the box of the one parameter whose update reads it; nodes shared by several (the
    step count, bias corrections, a global gradient norm) in the optimizer box itself."""
    producer = {node.output.id: node for node in graph.nodes}
    trained = {parameter.name for parameter, _ in graph.updates if not parameter.name.startswith(STATE_PREFIX)}
    owners: dict[int, set[str]] = {}
    for parameter, new_value in graph.updates:
        owner = _trained_parameter(parameter.name, trained)
        stack, seen = [new_value.id], set()
        while stack:
            value_id = stack.pop()
            node = producer.get(value_id)
            if value_id in seen or node is None or node.provenance.role != "optimizer":
                continue
            seen.add(value_id)
            owners.setdefault(value_id, set()).add(owner)
            stack.extend(value.id for value in node.inputs)
    boxes = {}
    for node in graph.nodes:
        if node.provenance.role == "optimizer":
            names = owners.get(node.output.id, set())
            boxes[node.output.id] = parameter_box(names.pop()) if len(names) == 1 and "" not in names \
                else (OPTIMIZER,)
    return boxes


def box_paths(graph: Graph) -> dict[int, Box]:
    """Value id -> the box it sits in, for every input, parameter and node of `graph`."""
    loss = loss_nodes(graph)
    optimizer = _optimizer_boxes(graph)
    boxes: dict[int, Box] = {value.id: () for value in graph.inputs}
    for node in graph.nodes:
        boxes[node.output.id] = _node_box(node, loss, optimizer, boxes)
    readers = graph.users()
    trained = {parameter.name for parameter, _ in graph.updates}
    for value in graph.params:
        boxes[value.id] = _parameter_value_box(value.name, readers.get(value.id, []), trained)
    return boxes


def _node_box(node: Node, loss: set[int], optimizer: dict[int, Box], boxes: dict[int, Box]) -> Box:
    provenance = node.provenance
    if provenance.role == "optimizer":
        return optimizer[node.output.id]
    if provenance.role == "combine":
        return (COMBINE,)
    own = (LOSS,) if node.output.id in loss else module_parts(provenance.module_path)
    if provenance.role == "forward":
        return own
    # backward, recompute: beside the forward box of the node differentiated (its own module path otherwise)
    forward = boxes.get(provenance.differentiates) if provenance.differentiates is not None else None
    if forward is None or (forward and forward[0].endswith(BACKWARD)):
        forward = own if own or not loss else (LOSS,)
    return backward_box(forward)


def _parameter_value_box(name: str, readers: Iterable[Node], trained: set[str]) -> Box:
    """A parameter in the module owning it; optimizer state (read by the optimizer's update only) with its
    parameter in the optimizer's box."""
    readers = list(readers)
    if readers and all(node.provenance.role == "optimizer" for node in readers):
        owner = _trained_parameter(name, {n for n in trained if not n.startswith(STATE_PREFIX)})
        return parameter_box(owner) if owner else (OPTIMIZER,)
    return module_parts(name.rpartition(".")[0])
