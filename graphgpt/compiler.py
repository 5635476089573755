"""graphgpt.compile: trace a model (or function) at example inputs into an ir.Graph, run the passes, and return a
Compiled object whose run() executes the graph over NumPy.

    fwd = graphgpt.compile(model, tokens)
    logits = fwd.run(tokens)          # or fwd(tokens)
    print(fwd.graph)

    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=3e-4))
    loss = step.run(tokens, targets)  # forward, generated backward and update: model parameters change in place
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, ShapeError, TensorType, verify
from graphgpt.passes import infer_shapes
from graphgpt.passes.analysis import graph_flops
from graphgpt.passes.autodiff import append_backward
from graphgpt.passes.data_parallel import prove_split, scale_shard_graph, shard_mismatch
from graphgpt.passes.manager import StageRecord, format_report, run_pipeline

from .data_parallel import (MIN_SPLIT_FLOPS, DataParallelExecutor, Split, available_cores, combine_graph)
from .executor import Executor
from .nn.module import Module
from .optim import Optimizer
from .tensor import Tensor
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


@dataclass
class Traced:
    """What tracing gives: the graph, the tensors its parameters stand for (by name), and whether the function
    returned a tuple (so run() returns one too)."""

    graph: Graph
    bindings: dict[str, Tensor]
    returns_tuple: bool


def trace(function: Callable, *example_inputs, named_parameters: Optional[Iterable[tuple[str, Tensor]]] = None,
          input_names: Optional[Sequence[str]] = None) -> Traced:
    """Trace `function` (a Module, or a callable taking Tensors) at the examples' shapes and dtypes.

    A Module's parameters become named graph parameters; pass `named_parameters` to name those of a plain
    function's closure instead (any other concrete tensor becomes a constant)."""
    if named_parameters is None:
        named_parameters = function.named_parameters() if isinstance(function, Module) else []
    named = list(named_parameters)
    recorder = Trace(named)
    names = list(input_names) if input_names is not None else _input_names(function, len(example_inputs))
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
    return Traced(recorder.finish(outputs), dict(named), isinstance(result, (tuple, list)))


def trace_loss(model: Callable, example_inputs: Sequence, loss: Callable) -> Traced:
    """Trace loss(model(*inputs[:-1]), inputs[-1]): the graph of a training objective, targets last."""
    if len(example_inputs) < 2:
        raise TypeError("with loss=, pass the model's inputs and then the targets: "
                        "compile(model, tokens, targets, loss=...)")

    def model_and_loss(*inputs):
        return loss(model(*inputs[:-1]), inputs[-1])

    named = list(model.named_parameters()) if isinstance(model, Module) else []
    names = _input_names(model, len(example_inputs) - 1) + ["targets"]
    traced = trace(model_and_loss, *example_inputs, named_parameters=named, input_names=names)
    if traced.returns_tuple:
        raise TraceError("the loss function must return one scalar Tensor, not a tuple")
    return traced


def trainable_parameters(model: Callable) -> list[tuple[str, Tensor]]:
    """(name, parameter) for every parameter of a Module that requires grad; none for a plain function."""
    named = model.named_parameters() if isinstance(model, Module) else []
    return [(name, parameter) for name, parameter in named if parameter.requires_grad]


class Compiled:
    """A compiled graph bound to the tensors its parameters stand for (live: the model's own arrays, read at every
    run and, for a training step, updated in place).

    For a graph with gradients, run() returns the loss and `grads` maps each parameter name to its gradient from
    the latest run."""

    def __init__(self, graph: Graph, bindings: dict[str, Tensor], returns_tuple: bool,
                 gradient_names: Sequence[str] = (), stages: Sequence[StageRecord] = (),
                 check_numerics=False, executor=None, split: Optional[Split] = None):
        self.graph = graph
        self.stages = list(stages)  # the graph after tracing and after each pass, with measurements
        self.bindings = bindings
        self._bound = [bindings[value.name] for value in graph.params]
        self._returns_tuple = returns_tuple
        self.gradient_names = list(gradient_names)
        self._num_results = len(graph.outputs) - len(self.gradient_names)
        self.grads: dict[str, np.ndarray] = {}
        # The schedule that runs it: one Executor, or shards of the batch on several threads (graphgpt.data_parallel).
        self._executor = executor if executor is not None else Executor(graph, check_numerics=check_numerics)
        self.split = split if split is not None else Split(1, "a forward graph" if not gradient_names else "off")

    @property
    def planned_bytes(self) -> int:
        """Bytes of the buffers the schedule allocated once and reuses every run (all shards' together)."""
        return self._executor.planned_bytes

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
            array = np.asarray(_as_example(data), order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
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
        for value, tensor in zip(self.graph.params, self._bound):
            if tensor.type != value.type:
                raise InputError(f"parameter {value.name!r} is now {tensor.type}, but the graph was compiled "
                                 f"for {value.type}; compile again after changing the model")
            if not tensor.data.flags.c_contiguous:  # the schedule writes updates into these arrays in place
                tensor.data = np.asarray(tensor.data, order="C")
            arrays.append(tensor.data)
        return arrays

    def run(self, *inputs) -> Union[np.ndarray, tuple]:
        """Execute the graph on NumPy arrays (or Tensors) of the compiled shapes and dtypes."""
        outputs = self._executor.run(self._check_inputs(inputs), self._param_arrays())
        # Gradients stay in the executor's buffers (valid until the next run, as torch's .grad is until the next
        # backward); what run() returns is copied, so a caller may keep it.
        self.grads = dict(zip(self.gradient_names, outputs[self._num_results:]))
        results = [np.array(output, copy=True) for output in outputs[:self._num_results]]
        return tuple(results) if self._returns_tuple else results[0]

    __call__ = run

    def report(self) -> str:
        """A per-pass table: node count, FLOPs, memory and what each pass changed; then how the step runs."""
        return format_report(self.stages) + "\n" + self.split.describe()

    def render(self, path: str = "graph.svg", collapse: Optional[int] = None, stage: Optional[str] = None) -> str:
        """Draw the graph (or the graph after pass `stage`, e.g. 'input' as traced) to `path`: SVG by default,
        PNG or PDF by extension. `collapse=k` draws one box per module path cut to k parts. Returns the path."""
        from .render import render_graph

        graph = self.graph
        if stage is not None:
            named = {record.name: record.graph for record in self.stages}
            if stage not in named:
                raise ValueError(f"no stage {stage!r}; stages: {', '.join(named)}")
            graph = named[stage]
        return render_graph(graph, path, collapse=collapse, title=graph.header)

    def memory_timeline(self):
        """Live bytes after each step of the schedule and the values holding the peak (see memory_timeline)."""
        from .memory_timeline import memory_timeline

        return memory_timeline(self.graph)

    def render_passes(self, folder: str = "passes") -> str:
        """A diagram per pass (removed nodes marked before, created and fused after) and an HTML index of node
        counts, FLOPs and planned memory; returns the index's path."""
        from .pass_diagrams import render_passes

        return render_passes(self.stages, folder)

    def __repr__(self) -> str:
        signature = ", ".join(f"{value.name}: {value.type}" for value in self.graph.inputs)
        return f"<graphgpt.Compiled ({signature}) with {len(self.graph.nodes)} nodes>"


def compile(model: Callable, *example_inputs, loss: Optional[Callable] = None,
            optimizer: Optional[Optimizer] = None, passes: Optional[Sequence] = None,
            verify_each: bool = False, check_numerics=False, shards: Optional[int] = None) -> Compiled:
    """Trace `model` at the example inputs, infer shapes, verify, and prepare the executor.

    Without `loss`, the graph is the model's forward. With `loss`, the last example input is the target: the
    graph computes loss(model(*inputs), targets), its gradients for every parameter (generated backward nodes),
    and with `optimizer` the parameter update too, so each run is one whole training step.

    `passes` chooses the optimisation passes (names from graphgpt.passes.manager.PASSES; default its
    DEFAULT_PIPELINE; [] for none, to study the graph as traced); `verify_each` runs the verifier after each.
    `check_numerics` (a debug option) checks every node's output and names the first node, with its module path
    and source line, that produced a NaN (True or "nan") or also an infinity ("nonfinite"; the causal mask's
    intended -inf then shows up too).

    `shards` (training steps only) runs the batch as that many equal data-parallel shards, one thread each,
    when passes/data_parallel.py proves the split exact (every example computed alone, the loss a mean or sum
    over the batch); it raises if not. The default splits into as many shards as there are cores when that is
    proved and the step is big enough to gain (MIN_SPLIT_FLOPS); 1 never splits. `compiled.split` says which.

    >>> fwd = graphgpt.compile(model, tokens)                                  # doctest: +SKIP
    >>> fwd.run(tokens).shape                                                  # doctest: +SKIP
    (2, 16, 65)
    >>> step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy,
    ...                         optimizer=graphgpt.optim.Adam(lr=3e-4))      # doctest: +SKIP
    >>> float(step.run(tokens, targets)), step.grads["lm_head.weight"].shape  # doctest: +SKIP
    """
    if not example_inputs:
        raise TypeError("graphgpt.compile needs example inputs to trace with, e.g. compile(model, tokens)")
    if loss is None:
        if optimizer is not None:
            raise TypeError("an optimizer needs a loss: compile(model, inputs, targets, loss=..., optimizer=...)")
        if shards not in (None, 1):
            raise TypeError("shards splits a training step: compile(model, inputs, targets, loss=..., shards=...)")
        traced = trace(model, *example_inputs)
        graph, stages = run_pipeline(verify(infer_shapes(traced.graph)), passes, verify_each)
        return Compiled(verify(graph), traced.bindings, traced.returns_tuple, stages=stages,
                        check_numerics=check_numerics)

    traced = trace_loss(model, example_inputs, loss)
    forward = infer_shapes(traced.graph)
    trainable = trainable_parameters(model)
    wrt = [name for name, _ in trainable]
    graph = append_backward(forward, wrt)
    bindings = dict(traced.bindings)
    if optimizer is not None:
        optimizer.bind(trainable)
        graph = optimizer.append_to(graph, _gradient_positions(wrt))
        bindings.update(optimizer.state_tensors())
    graph, stages = run_pipeline(verify(graph), passes, verify_each)
    split, executor = _split_step(model, example_inputs, loss, forward, graph, shards, passes, verify_each,
                                  check_numerics, wrt, optimizer)
    return Compiled(verify(graph), bindings, returns_tuple=False, gradient_names=wrt, stages=stages,
                    check_numerics=check_numerics, executor=executor, split=split)


def _gradient_positions(wrt: Sequence[str]) -> dict[str, int]:
    """Where each parameter's gradient is among a training graph's outputs (after the loss)."""
    return {name: 1 + position for position, name in enumerate(wrt)}


def _split_step(model, example_inputs, loss, forward: Graph, step: Graph, shards: Optional[int], passes,
                verify_each, check_numerics, wrt, optimizer) -> tuple[Split, Optional[DataParallelExecutor]]:
    """Decide whether the training step runs as data-parallel shards, and build their executor if so."""
    wanted = available_cores() if shards is None else shards
    if not isinstance(wanted, int) or wanted < 1:
        raise ValueError(f"shards must be a positive integer or None, got {shards!r}")
    if wanted == 1:
        return Split(1, "one core" if shards is None else "shards=1"), None
    flops = graph_flops(step)
    if shards is None and flops < MIN_SPLIT_FLOPS:
        return Split(1, f"{flops / 1e9:.2f} GFLOP per step is too little to gain"), None
    proof, problem = prove_split(forward, wanted)
    examples = [_as_example(example) for example in example_inputs]
    if problem is None:
        pieces = [example[:example.shape[0] // wanted] for example in examples]
        shard_forward = infer_shapes(trace_loss(model, pieces, loss).graph)
        problem = shard_mismatch(forward, shard_forward, proof)
    if problem is not None:
        if shards is not None:
            raise ValueError(f"cannot split this training step into {wanted} data-parallel shards: {problem}")
        return Split(1, problem), None
    shard_forward = scale_shard_graph(shard_forward, forward, proof)
    shard_step, _ = run_pipeline(verify(append_backward(shard_forward, wrt)), passes, verify_each)
    combine = combine_graph(verify(shard_step), wanted)
    if optimizer is not None:
        combine = optimizer.append_to(combine, _gradient_positions(wrt))
    combine, _ = run_pipeline(verify(combine), passes, verify_each)
    executor = DataParallelExecutor(shard_step, verify(combine), wanted, [value.name for value in step.params],
                                    check_numerics)
    batch = examples[0].shape[0]
    return Split(wanted, f"batch {batch} as {wanted} x {batch // wanted}, {proof.describe()}"), executor
