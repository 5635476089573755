"""graphgpt.compile: trace a model (or function) at example inputs into an ir.Graph, run the passes, and return a
Compiled object whose run() executes the graph over NumPy.

    fwd = graphgpt.compile(model, tokens)
    logits = fwd.run(tokens)          # or fwd(tokens)
    print(fwd.graph)
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, ShapeError, TensorType, verify
from graphgpt.passes import infer_shapes

from .executor import Executor
from .nn.module import Module
from .tensor import Parameter, Tensor
from .tracing import Trace, TraceError, tracing


class InputError(ShapeError):
    """run() was given inputs that do not match the types the graph was compiled for."""


def _input_names(function: Callable, count: int) -> list[str]:
    """Names for the graph inputs, from the traced function's signature where it has them (`tokens`)."""
    target = function.forward if isinstance(function, Module) else function
    try:
        parameters = [p for p in inspect.signature(target).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters[:count]]
    return names + [f"input{index}" for index in range(len(names), count)]


def _as_example(data) -> np.ndarray:
    return data.data if isinstance(data, Tensor) else np.asarray(data)


def trace(function: Callable, *example_inputs) -> tuple[Graph, list[Parameter], bool]:
    """Trace `function` (a Module or a callable taking Tensors) at the examples' shapes and dtypes.

    Returns the graph, the parameters its `params` stand for (in the same order), and whether the function
    returned a tuple (so run() returns one too)."""
    named = list(function.named_parameters()) if isinstance(function, Module) else []
    recorder = Trace(named)
    names = _input_names(function, len(example_inputs))
    inputs = []
    for name, example in zip(names, example_inputs):
        value = recorder.add_input(name, TensorType.of(_as_example(example)))
        inputs.append(Tensor._symbolic(value, recorder))
    with tracing(recorder):
        result = function(*inputs)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    for position, output in enumerate(outputs):
        if not isinstance(output, Tensor):
            raise TraceError(f"the traced function must return Tensors; output {position} is a "
                             f"{type(output).__name__}")
    graph = recorder.finish(outputs)
    return graph, [parameter for _, parameter in named], isinstance(result, (tuple, list))


class Compiled:
    """A compiled graph bound to the parameters it reads (live: updating the model updates what runs)."""

    def __init__(self, graph: Graph, parameters: Sequence[Parameter], returns_tuple: bool):
        self.graph = graph
        self.parameters = list(parameters)
        self._returns_tuple = returns_tuple
        self._executor = Executor(graph)

    @property
    def input_types(self) -> list[TensorType]:
        return [value.type for value in self.graph.inputs]

    def _check_inputs(self, inputs) -> list[np.ndarray]:
        expected = self.graph.inputs
        if len(inputs) != len(expected):
            signature = ", ".join(f"{value.name}: {value.type}" for value in expected)
            raise InputError(f"compiled graph takes {len(expected)} input(s) ({signature}), got {len(inputs)}")
        arrays = []
        for position, (value, data) in enumerate(zip(expected, inputs)):
            array = _as_example(data)
            try:
                got = str(TensorType.of(array))
            except ShapeError:
                got = f"an array of dtype {array.dtype}"
            if got != str(value.type):
                raise InputError(
                    f"input {position} ({value.name!r}): expected {value.type}, got {got}. The graph was "
                    f"compiled for {value.type}; compile again with an example of the new shape or dtype")
            arrays.append(array)
        return arrays

    def _param_arrays(self) -> list[np.ndarray]:
        arrays = []
        for value, parameter in zip(self.graph.params, self.parameters):
            if parameter.type != value.type:
                raise InputError(f"parameter {value.name!r} is now {parameter.type}, but the graph was compiled "
                                 f"for {value.type}; compile again after changing the model")
            arrays.append(parameter.data)
        return arrays

    def run(self, *inputs) -> Union[np.ndarray, tuple]:
        """Execute the graph on NumPy arrays (or Tensors) of the compiled shapes and dtypes."""
        outputs = self._executor.run(self._check_inputs(inputs), self._param_arrays())
        return tuple(outputs) if self._returns_tuple else outputs[0]

    __call__ = run

    def __repr__(self) -> str:
        signature = ", ".join(f"{value.name}: {value.type}" for value in self.graph.inputs)
        return f"<graphgpt.Compiled ({signature}) with {len(self.graph.nodes)} nodes>"


def compile(model: Callable, *example_inputs) -> Compiled:
    """Trace `model` at the example inputs, infer shapes, verify, and prepare the executor.

    >>> model = graphgpt.nn.GPT(65, 64, 2, 4, 32)                     # doctest: +SKIP
    >>> fwd = graphgpt.compile(model, np.zeros((2, 16), np.int64))   # doctest: +SKIP
    >>> fwd.run(tokens).shape                                       # doctest: +SKIP
    (2, 16, 65)
    """
    if not example_inputs:
        raise TypeError("graphgpt.compile needs example inputs to trace with, e.g. compile(model, tokens)")
    graph, parameters, returns_tuple = trace(model, *example_inputs)
    graph = verify(infer_shapes(graph))
    return Compiled(graph, parameters, returns_tuple)
