"""Tracing a model or function at example inputs into a graph: the entry points graphgpt.compile, gradcheck and
compile_generation trace through (the tracing state itself, the active trace and module scopes, is in
graphgpt/tracing.py). A Module's parameters and buffers become named graph parameters, read live at every run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, TensorType
from graphgpt.ir.dims import active_shape_env

from .nn.module import Module
from .tensor import Tensor
from .tracing import Trace, TraceError, tracing


def default_input_names(function: Callable, count: int) -> list[str]:
    """Names for the graph inputs, from the traced function's signature where it has them (`tokens`)."""
    target = function.forward if isinstance(function, Module) else function
    try:
        parameters = [p for p in inspect.signature(target).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters[:count]]
    return names + [f"input{index}" for index in range(len(names), count)]


def example_array(data) -> np.ndarray:
    return data.data if isinstance(data, Tensor) else np.asarray(data)


@dataclass
class Traced:
    """What tracing gives: the graph, the tensors its parameters stand for (by name), and whether the function
    returned a tuple (so run() returns one too)."""

    graph: Graph
    bindings: dict[str, Tensor]
    returns_tuple: bool


def trace(function: Callable, *example_inputs, named_parameters: Optional[Iterable[tuple[str, Tensor]]] = None,
          input_names: Optional[Sequence[str]] = None, input_types: Optional[Sequence[TensorType]] = None) -> Traced:
    """Trace `function` (a Module, or a callable taking Tensors) at the examples' shapes and dtypes.

    A Module's parameters and buffers become named graph parameters, read live at every run; pass
    `named_parameters` to name those of a plain function's closure instead (any other concrete tensor becomes a
    constant). `input_types` overrides the examples' types (symbolic sizes: graphgpt/dynamic.py)."""
    if named_parameters is None:
        named_parameters = module_tensors(function)
    named = list(named_parameters)
    recorder = Trace(named)
    names = list(input_names) if input_names is not None else default_input_names(function, len(example_inputs))
    inputs = []
    types = input_types or [TensorType.of(example_array(example)) for example in example_inputs]
    for name, type in zip(names, types):
        value = recorder.add_input(name, type)
        inputs.append(Tensor._symbolic(value, recorder))
    env = active_shape_env()
    recording = env is not None and env.recording
    if env is not None:
        env.recording = True  # a symbolic trace records guards; the passes after it may only read them
    try:
        with tracing(recorder):
            result = function(*inputs)
    finally:
        if env is not None:
            env.recording = recording
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    for position, output in enumerate(outputs):
        if not isinstance(output, Tensor):
            raise TraceError(f"the traced function must return Tensors; output {position} is a "
                             f"{type(output).__name__}")
    return Traced(recorder.finish(outputs), dict(named), isinstance(result, (tuple, list)))


def trace_loss(model: Callable, example_inputs: Sequence, loss: Callable,
               input_types: Optional[Sequence[TensorType]] = None) -> Traced:
    """Trace loss(model(*inputs[:-1]), inputs[-1]): the graph of a training objective, targets last."""
    if len(example_inputs) < 2:
        raise TypeError("with loss=, pass the model's inputs and then the targets: "
                        "compile(model, tokens, targets, loss=...)")

    def model_and_loss(*inputs):
        return loss(model(*inputs[:-1]), inputs[-1])

    names = default_input_names(model, len(example_inputs) - 1) + ["targets"]
    traced = trace(model_and_loss, *example_inputs, named_parameters=module_tensors(model), input_names=names,
                   input_types=input_types)
    if traced.returns_tuple:
        raise TraceError("the loss function must return one scalar Tensor, not a tuple")
    return traced


def module_tensors(model: Callable) -> list[tuple[str, Tensor]]:
    """(name, tensor) for every parameter and buffer of a Module (what a graph reads live); none for a function."""
    if not isinstance(model, Module):
        return []
    return [*model.named_parameters(), *model.named_buffers()]


def trainable_parameters(model: Callable) -> list[tuple[str, Tensor]]:
    """(name, parameter) for every parameter of a Module that requires grad; none for a plain function."""
    named = model.named_parameters() if isinstance(model, Module) else []
    return [(name, parameter) for name, parameter in named if parameter.requires_grad]
