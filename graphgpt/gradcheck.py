"""Gradient checking for users: compare the generated backward graph with float64 central differences.

    report = graphgpt.check_gradients(model, tokens, targets, loss=F.cross_entropy)
    print(report)            # a table per parameter, the worst one, and where the backward pass first diverges
    assert report.passed

The model is copied and converted to float64 (the caller's model is untouched), so the comparison measures the
gradient rules, not float32 rounding. When a parameter fails, every float value of the forward graph is checked
too, latest first (the order the backward pass computes them): its generated gradient against a central
difference along a random direction, so the report can name the first backward step that went wrong.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from graphgpt.ir import Graph, GraphBuilder, Node
from graphgpt.passes.autodiff import append_backward_with_map
from graphgpt.passes.schedule import Schedule

from .trace_entry import trace, trace_loss, trainable_parameters
from .nn.module import Module
from .tensor import Tensor


@dataclass
class ParameterCheck:
    name: str
    relative_error: float  # see _relative_error: over the checked elements, floored for near-zero gradients
    max_abs_error: float
    elements_checked: int
    elements_total: int


@dataclass
class GradientReport:
    parameters: list[ParameterCheck]
    tolerance: float
    first_divergent_node: Optional[str] = None  # the forward value whose generated gradient first goes wrong
    node_checks: list[str] = field(default_factory=list)

    @property
    def worst(self) -> ParameterCheck:
        return max(self.parameters, key=lambda check: check.relative_error)

    @property
    def passed(self) -> bool:
        return all(check.relative_error <= self.tolerance for check in self.parameters)

    def __str__(self) -> str:
        width = max(len(check.name) for check in self.parameters)
        lines = [f"{'parameter':<{width}}  {'rel. error':>10}  {'max abs':>9}  checked"]
        for check in self.parameters:
            flag = "" if check.relative_error <= self.tolerance else "  <-- above tolerance"
            lines.append(f"{check.name:<{width}}  {check.relative_error:>10.2e}  {check.max_abs_error:>9.2e}  "
                         f"{check.elements_checked}/{check.elements_total}{flag}")
        worst = self.worst
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"{verdict}: worst parameter {worst.name} with relative error {worst.relative_error:.2e} "
                     f"(tolerance {self.tolerance:.0e})")
        if self.first_divergent_node:
            lines.append(f"first diverging gradient: {self.first_divergent_node}")
        return "\n".join(lines)


# Central differences in float64 carry about 1e-16 * |loss| / epsilon ~ 1e-10 of noise per element, so they
# cannot resolve a 1e-6 relative error in a gradient smaller than ~1e-3 per element. Below that scale (a gradient
# that is truly zero, such as a key-projection bias under softmax) the error is measured against the floor.
GRADIENT_SCALE_FLOOR = 1e-3


def _relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """||analytic - numeric|| / max(||analytic||, ||numeric||, floor * sqrt(elements)); 0 for a zero-size
    gradient, which has nothing that could be wrong (and would otherwise divide 0 by 0)."""
    if analytic.size == 0:
        return 0.0
    scale = max(np.linalg.norm(analytic), np.linalg.norm(numeric), GRADIENT_SCALE_FLOOR * np.sqrt(analytic.size))
    return float(np.linalg.norm(analytic - numeric) / scale)


def _with_perturbation(graph: Graph, node: Node) -> Graph:
    """A copy of `graph` with an extra last input `delta` added to `node`'s output before anything reads it."""
    builder = GraphBuilder(header=f"perturb {node.output.label}")
    new_values = {}
    for value in graph.inputs:
        new_values[value.id] = builder.add_input(value.name, value.type)
    for value in graph.params:
        new_values[value.id] = builder.add_param(value.name, value.type)
    delta = builder.add_input("delta", node.output.type)
    for original in graph.nodes:
        new = builder.add_node(original.op, [new_values[v.id] for v in original.inputs], original.attrs,
                               original.provenance)
        new_values[original.output.id] = builder.add_node("add", [new, delta]) if original is node else new
    return builder.finish([new_values[value.id] for value in graph.outputs])


def check_gradients(model: Callable, *inputs, loss: Optional[Callable] = None, epsilon: float = 1e-5,
                    tolerance: float = 1e-6, max_elements: Optional[int] = None, seed: int = 0,
                    locate: bool = True, through: str = "graph") -> GradientReport:
    """Check the generated gradients of `model` against float64 central differences.

    With `loss`, the last input is the target and the objective is loss(model(*inputs[:-1]), inputs[-1]);
    gradients are checked for every parameter. Without it, `model` is a function returning a scalar and
    gradients are checked for its float inputs. `max_elements` caps the elements checked per parameter (a
    seeded random subset); by default every element is checked. `through="eager"` checks the gradients the
    eager tape (loss.backward()) computes instead of the generated backward graph.
    """
    if through not in ("graph", "eager"):
        raise ValueError(f"through must be 'graph' or 'eager', got {through!r}")
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(model).to("float64") if isinstance(model, Module) else model
    arrays = [np.asarray(x.data if isinstance(x, Tensor) else x) for x in inputs]
    arrays = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in arrays]
    input_tensors = [Tensor(array, dtype=array.dtype) for array in arrays]  # shared: a perturbation is seen by all

    if loss is not None:
        traced = trace_loss(model, arrays, loss)
        checked = trainable_parameters(model)
    else:
        traced = trace(model, *arrays)
        checked = [(value.name, tensor) for value, tensor in zip(traced.graph.inputs, input_tensors)
                   if tensor.type.is_float]
    graph = traced.graph
    if len(graph.outputs) != 1 or graph.outputs[0].type.shape != ():
        raise ValueError(f"check_gradients needs a scalar objective, got outputs "
                         f"{[str(value.type) for value in graph.outputs]}")
    if not checked:
        raise ValueError("nothing to check: the model has no trainable parameters and no float inputs")

    # Arrays by graph name; perturbing one in place is seen by every run below.
    leaf_arrays = {value.name: array for value, array in zip(graph.inputs, arrays)}
    leaf_arrays.update({name: tensor.data for name, tensor in traced.bindings.items()})
    leaf_arrays.update({name: tensor.data for name, tensor in checked})

    def feed(executor_graph: Graph, extra=()):
        return ([leaf_arrays[value.name] for value in executor_graph.inputs[:len(graph.inputs)]] + list(extra),
                [leaf_arrays[value.name] for value in executor_graph.params])

    names = [name for name, _ in checked]
    backward, gradient_of = append_backward_with_map(graph, names)
    backward = backward.graph
    if through == "graph":
        analytic = dict(zip(names, Schedule(backward).run(*feed(backward))[1:]))
    else:
        analytic = _eager_gradients(model, loss, input_tensors, checked)
    objective = Schedule(graph)

    def evaluate() -> float:
        return float(objective.run(*feed(graph))[0])

    results = []
    for name in names:
        array = leaf_arrays[name]
        flat_indices = np.arange(array.size)
        if max_elements is not None and array.size > max_elements:
            flat_indices = np.sort(rng.choice(array.size, max_elements, replace=False))
        numeric = np.empty(len(flat_indices))
        for position, flat in enumerate(flat_indices):
            index = np.unravel_index(flat, array.shape)
            original = array[index]
            array[index] = original + epsilon
            above = evaluate()
            array[index] = original - epsilon
            below = evaluate()
            array[index] = original
            numeric[position] = (above - below) / (2 * epsilon)
        generated = analytic[name].reshape(-1)[flat_indices]
        results.append(ParameterCheck(name, _relative_error(generated, numeric),
                                      float(np.max(np.abs(generated - numeric), initial=0.0)),
                                      len(flat_indices), array.size))

    report = GradientReport(results, tolerance)
    if locate and not report.passed:
        _locate_divergence(report, graph, backward, gradient_of, feed, epsilon, rng)
    return report


def _eager_gradients(model, loss, input_tensors, checked) -> dict[str, np.ndarray]:
    """Gradients from the eager tape: run the objective op by op and call backward()."""
    for _, tensor in checked:
        tensor.requires_grad, tensor.grad = True, None
    if loss is not None:
        objective = loss(model(*input_tensors[:-1]), input_tensors[-1])
    else:
        objective = model(*input_tensors)
    objective.backward()
    return {name: tensor.grad if tensor.grad is not None else np.zeros(tensor.shape) for name, tensor in checked}


def _locate_divergence(report, graph, backward, gradient_of, feed, epsilon, rng) -> None:
    """Check d objective / d value for every float forward value, latest first, along a random direction."""
    candidates = [node for node in graph.nodes if node.output.id in gradient_of]
    probe = Graph(backward.inputs, backward.params, backward.nodes,
                  [gradient_of[node.output.id] for node in candidates], header="gradient probe")
    generated = dict(zip((node.output.id for node in candidates), Schedule(probe).run(*feed(probe))))
    users = graph.users()
    for node in reversed(candidates):
        direction = rng.standard_normal(node.output.shape).astype(node.output.type.numpy_dtype)
        perturbed = _with_perturbation(graph, node)
        schedule = Schedule(perturbed)
        above = float(schedule.run(*feed(perturbed, [epsilon * direction]))[0])
        below = float(schedule.run(*feed(perturbed, [-epsilon * direction]))[0])
        numeric = (above - below) / (2 * epsilon)
        analytic = float(np.sum(generated[node.output.id] * direction))
        error = _relative_error(np.array([analytic]), np.array([numeric]))
        report.node_checks.append(f"{node.describe()}: {error:.1e}")
        if error > report.tolerance:
            readers = ", ".join(f"{user.op} {user.output.label}" for user in users[node.output.id])
            report.first_divergent_node = (
                f"the gradient with respect to {node.describe()}: generated {analytic:.6g} vs numeric "
                f"{numeric:.6g} along a random direction (relative error {error:.1e}). Every later value's "
                f"gradient agreed, so look at the gradient rule of what reads it: {readers}")
            return
