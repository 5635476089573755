"""graphgpt.compile: trace a model (or function) at example inputs into an ir.Graph, let passes/ build the Program
(the graphs that run, their schedules and every pass's record), and return a Compiled object binding it to the
model's tensors, whose run() executes it over NumPy.

    fwd = graphgpt.compile(model, tokens)
    logits = fwd.run(tokens)          # or fwd(tokens)
    print(fwd.graph)

    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=3e-4))
    loss = step.run(tokens, targets)  # forward, generated backward and update: model parameters change in place
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, ShapeError, TensorType, verify
from graphgpt.passes import infer_shapes
from graphgpt.passes.program import Program, ProgramGraph, build_forward_program, build_training_program

from .guards import BindingGuard
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

    A Module's parameters and buffers become named graph parameters, read live at every run; pass
    `named_parameters` to name those of a plain function's closure instead (any other concrete tensor becomes a
    constant)."""
    if named_parameters is None:
        named_parameters = module_tensors(function)
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

    names = _input_names(model, len(example_inputs) - 1) + ["targets"]
    traced = trace(model_and_loss, *example_inputs, named_parameters=module_tensors(model), input_names=names)
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


class Compiled:
    """A Program (passes/program.py) bound to the tensors its parameters stand for (live: the model's own arrays,
    read at every run and, for a training step, updated in place).

    For a training step, run() returns the loss and `grads` maps each parameter name to its gradient from the
    latest run. `graphs` are the graphs that run, by name (one; or a data-parallel step's shard and combine
    graphs); `graph` is the whole step as one graph, which is what runs unless the step is split. run() may be
    called from several threads: runs take turns (see run)."""

    def __init__(self, program: Program, bindings: dict[str, Tensor], returns_tuple: bool,
                 guard: Optional[BindingGuard] = None):
        self.program = program
        self.bindings = bindings
        self._bound = [bindings[name] for name in program.param_names]
        # Finds the bound tensors again before each run, and refuses changes the graph cannot follow.
        self._guard = guard if guard is not None else BindingGuard(None, program.param_names)
        self._returns_tuple = returns_tuple
        self.gradient_names = program.gradient_names
        self._num_results = program.result_count
        self.grads: dict[str, np.ndarray] = {}
        self._run_lock = threading.Lock()

    @property
    def graph(self) -> Graph:
        """The whole step (or forward) as one graph: it runs as it is unless the step is split (see `graphs`)."""
        return self.program.whole.graph

    @property
    def graphs(self) -> dict[str, Graph]:
        """The graphs that run, by name, in the order they run."""
        return {entry.name: entry.graph for entry in self.program.graphs}

    @property
    def stages(self):
        """The record of every pass (and the input) over the first graph that runs."""
        return self.program.graphs[0].stages

    @property
    def split(self):
        return self.program.split

    @property
    def planned_bytes(self) -> int:
        """Bytes of the buffers the schedules allocated once and reuse every run (all shards' together)."""
        return self.program.planned_bytes

    @property
    def input_types(self) -> list[TensorType]:
        return list(self.program.input_types)

    @property
    def ir(self) -> str:
        """The text IR of every graph that runs, each headed by its name."""
        return "\n\n".join(f"# ---- {name} ----\n{graph}" for name, graph in self.graphs.items())

    def signature_mismatch(self, inputs) -> Optional[str]:
        """None when run() takes these inputs as compiled; else why not, in one line: the input count, or which
        input's type changed from what to what (`input 0 'tokens' changed i64[2,16] -> i64[2,17]`). A cache of
        compiled signatures asks this to choose an entry and to explain a recompile."""
        return self._mismatch(inputs)[1]

    def _mismatch(self, inputs) -> tuple[list[np.ndarray], Optional[str]]:
        """The inputs as C-ordered arrays, and why they do not fit the compiled signature (None if they do)."""
        expected = self.program.inputs
        if len(inputs) != len(expected):
            signature = ", ".join(f"{value.name}: {value.type}" for value in expected)
            return [], f"compiled graph takes {len(expected)} input(s) ({signature}), got {len(inputs)}"
        arrays = []
        for position, (value, data) in enumerate(zip(expected, inputs)):
            array = np.asarray(_as_example(data), order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
            try:
                got = str(TensorType.of(array))
            except ShapeError:
                got = f"an array of dtype {array.dtype}"
            if got != str(value.type):
                return arrays, f"input {position} {value.name!r} changed {value.type} -> {got}"
            arrays.append(array)
        return arrays, None

    def _check_inputs(self, inputs) -> list[np.ndarray]:
        arrays, mismatch = self._mismatch(inputs)
        if mismatch is None:
            return arrays
        if len(inputs) != len(self.program.inputs):
            raise InputError(mismatch)
        value = self.program.inputs[len(arrays)]
        got = mismatch.rpartition(" -> ")[2]
        raise InputError(f"input {len(arrays)} ({value.name!r}): expected {value.type}, got {got}. The graph was "
                         f"compiled for {value.type}; compile again with an example of the new shape or dtype")

    def _param_arrays(self) -> list[np.ndarray]:
        arrays = []
        for value, tensor in zip(self.program.params, self._bound):
            if tensor.type != value.type:
                raise InputError(f"parameter {value.name!r} is now {tensor.type}, but the graph was compiled "
                                 f"for {value.type}; compile again after changing the model")
            if not tensor.data.flags.c_contiguous:  # the schedule writes updates into these arrays in place
                tensor.data = np.asarray(tensor.data, order="C")
            arrays.append(tensor.data)
        return arrays

    def run(self, *inputs) -> Union[np.ndarray, tuple]:
        """Execute the program on NumPy arrays (or Tensors) of the compiled shapes and dtypes.

        Runs from several threads take turns: the schedules write into buffers planned once, and a training
        step updates the parameters in place, so two runs at once would overwrite each other. A lock, not
        per-thread buffers: on the medium GPT's forward, two threads sharing one Compiled took 1.6-1.7 s for 6
        runs each, two Compileds (buffers of their own) 2.2-2.7 s (benchmarks/threads.py): BLAS already keeps
        both cores busy inside one run, and two runs at once oversubscribe them."""
        arrays = self._check_inputs(inputs)
        with self._run_lock:
            self._bound = self._guard.current(self._bound)
            outputs = self.program.run(arrays, self._param_arrays())
            # Gradients stay in the schedule's buffers (valid until the next run, as torch's .grad is until the
            # next backward); what run() returns is copied, so a caller may keep it.
            self.grads = dict(zip(self.gradient_names, outputs[self._num_results:]))
            results = [np.array(output, copy=True) for output in outputs[:self._num_results]]
        return tuple(results) if self._returns_tuple else results[0]

    __call__ = run

    def report(self) -> str:
        """Per graph that runs, a per-pass table: node count, FLOPs, memory and what each pass changed; then
        how the step runs (and, for a split step, the whole-batch graph for study)."""
        return self.program.describe()

    def _entry(self, name: Optional[str]) -> ProgramGraph:
        entries = {entry.name: entry for entry in (*self.program.graphs, self.program.whole)}
        if name is None:
            return self.program.graphs[0]
        if name not in entries:
            raise ValueError(f"no graph {name!r}; graphs: {', '.join(entries)}")
        return entries[name]

    def render(self, path: str = "graph.svg", collapse: Optional[int] = None, stage: Optional[str] = None,
               graph: Optional[str] = None) -> str:
        """Draw the graphs that run into one diagram at `path` (SVG by default, PNG or PDF by extension), each a
        labelled box; or only `graph` (a name from `graphs`, or the whole step's, "training step"), after pass
        `stage` if given ('input': as it came to the passes). `collapse=k` draws one box per module path cut to
        k parts. Returns the path written."""
        from .render import render_graph, render_graphs

        if graph is None and stage is None:
            return render_graphs([(entry.title, entry.graph) for entry in self.program.graphs], path, collapse)
        entry = self._entry(graph)
        chosen = entry.graph
        if stage is not None:
            named = {record.name: record.graph for record in entry.stages}
            if stage not in named:
                raise ValueError(f"no stage {stage!r}; stages: {', '.join(named)}")
            chosen = named[stage]
        return render_graph(chosen, path, collapse=collapse, title=f"{entry.name}: {chosen.header}")

    def memory_timeline(self, graph: Optional[str] = None):
        """Live bytes after each step of a schedule and the values holding the peak (see memory_timeline), for
        the first graph that runs (a split step's shard graph, once per shard) or the graph named."""
        from .memory_timeline import memory_timeline

        entry = self._entry(graph)
        return memory_timeline(entry.graph, entry.plan)

    def render_passes(self, folder: str = "passes", graph: Optional[str] = None) -> str:
        """A diagram per pass over the first graph that runs (or `graph`) (removed nodes marked before, created
        and fused after) and an HTML index of node counts, FLOPs and planned memory; returns the index's path."""
        from .pass_diagrams import render_passes

        return render_passes(self._entry(graph).stages, folder)

    def __repr__(self) -> str:
        signature = ", ".join(f"{value.name}: {value.type}" for value in self.program.inputs)
        running = ", ".join(f"{name} ({len(graph.nodes)} nodes)" for name, graph in self.graphs.items())
        return f"<graphgpt.Compiled ({signature}) running {running}>"


def compile(model: Optional[Callable] = None, *example_inputs, loss: Optional[Callable] = None,
            optimizer: Optional[Optimizer] = None, passes: Optional[Sequence] = None,
            verify_each: bool = False, check_numerics=False, shards: Optional[int] = None,
            fast_math=False, dynamic=None, cache_size_limit: Optional[int] = None):
    """Trace `model` at the example inputs, infer shapes, verify, and build the Program that runs it.

    Without example inputs, `compile(model, **options)` returns at once a LazyCompiled (graphgpt/lazy.py) that
    does this at its first call's inputs and keeps one Compiled per input signature (at most `cache_size_limit`,
    8 by default; `dynamic=None` there means automatic); without a model, a decorator doing that
    (`@graphgpt.compile`, `@graphgpt.compile(dynamic=True)`).

    Without `loss`, the graph is the model's forward. With `loss`, the last example input is the target: the
    graph computes loss(model(*inputs), targets), its gradients for every parameter (generated backward nodes),
    and with `optimizer` the parameter update too, so each run is one whole training step.

    `passes` chooses the optimisation passes (names from graphgpt.passes.manager.PASSES; default its
    DEFAULT_PIPELINE and the value-changing passes `fast_math` allows; [] for none, to study the graph as
    traced); `verify_each` runs the verifier after each. Every rewrite the passes make by default gives
    bit-identical results; `fast_math` allows those that may not, as C compilers' fast-math flags do: True for
    all, or a set of names from passes/manager.py FAST_MATH_FLAGS ({"no_signed_zeros", "no_infinities",
    "reassociate", "approximate_functions"}).
    `check_numerics` (a debug option) checks every node's output and names the first node, with its module path
    and source line, that produced a NaN (True or "nan") or also an infinity ("nonfinite"; the causal mask's
    intended -inf then shows up too).

    `shards` (training steps only) runs the batch as that many equal data-parallel shards, one thread each,
    when passes/data_parallel.py proves the split exact (every example computed alone, the loss a sum of batch
    means and sums with batch-independent coefficients); it raises if not. Every input is cut along axis 0. The
    default splits into as many shards as there are cores when that is proved and the step is big enough to
    gain (MIN_SPLIT_FLOPS); 1 never splits. `compiled.split` says which, and why.

    >>> fwd = graphgpt.compile(model, tokens)                                  # doctest: +SKIP
    >>> fwd.run(tokens).shape                                                  # doctest: +SKIP
    (2, 16, 65)
    >>> step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy,
    ...                         optimizer=graphgpt.optim.Adam(lr=3e-4))      # doctest: +SKIP
    >>> float(step.run(tokens, targets)), step.grads["lm_head.weight"].shape  # doctest: +SKIP
    """
    if model is None or not example_inputs:  # lazy: trace at the first call's inputs
        from .lazy import lazy_compile

        options = dict(loss=loss, optimizer=optimizer, passes=passes, verify_each=verify_each,
                       check_numerics=check_numerics, shards=shards, fast_math=fast_math)
        if model is None and example_inputs:
            raise TypeError("graphgpt.compile(None, ...): pass the model or function to compile first")
        return lazy_compile(model, options, dynamic, cache_size_limit)
    if cache_size_limit is not None:
        raise TypeError("cache_size_limit bounds the signatures of a lazy compile, compile(model, "
                        "cache_size_limit=...) without example inputs; with them, compile traces once")
    if loss is None:
        if optimizer is not None:
            raise TypeError("an optimizer needs a loss: compile(model, inputs, targets, loss=..., optimizer=...)")
        if shards not in (None, 1):
            raise TypeError("shards splits a training step: compile(model, inputs, targets, loss=..., shards=...)")
        traced = trace(model, *example_inputs)
        program = build_forward_program(infer_shapes(traced.graph), passes, verify_each, check_numerics, fast_math)
        return Compiled(program, traced.bindings, traced.returns_tuple, BindingGuard(model, program.param_names))

    traced = trace_loss(model, example_inputs, loss)
    trainable = trainable_parameters(model)
    bindings = dict(traced.bindings)
    rule = None
    if optimizer is not None:
        optimizer.bind(trainable)
        rule = optimizer.update_rule()
        bindings.update(optimizer.state_tensors())
    examples = [_as_example(example) for example in example_inputs]

    def trace_shard(shards: int) -> Graph:
        pieces = [example[:example.shape[0] // shards] for example in examples]
        return infer_shapes(trace_loss(model, pieces, loss).graph)

    program = build_training_program(verify(infer_shapes(traced.graph)), [name for name, _ in trainable], rule,
                                     passes=passes, verify_each=verify_each, check_numerics=check_numerics,
                                     shards=shards, trace_shard=trace_shard, fast_math=fast_math)
    return Compiled(program, bindings, returns_tuple=False,
                    guard=BindingGuard(model, program.param_names, optimizer))
