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

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, ShapeError, TensorType, verify
from graphgpt.ir.shape_env import ShapeEnv, shape_env
from graphgpt.passes import infer_shapes
from graphgpt.passes.program import Program, ProgramGraph
from graphgpt.passes.program_build import build_forward_program, build_training_program
from graphgpt.passes.rematerialize import RematOptions
from graphgpt.passes.specialize import bind_sizes, describe_sizes

from .dynamic import Specializations, dynamic_names, make_shape_env, symbolic_input_types
from .guards import BindingGuard
from .recompiles import explain
from .optim import Optimizer
from .tensor import Tensor
from .trace_entry import default_input_names, example_array, trace, trace_loss, trainable_parameters


class InputError(ShapeError):
    """run() was given inputs that do not match the types the graph was compiled for."""


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
        # Per parameter, the type and array _param_arrays last checked (under the run lock): the same objects
        # again need no second look (a hundred tensor types compared before every run cost 40 us).
        self._checked: list[tuple] = [(None, None)] * len(self._bound)
        # Each input's compiled shape and dtype, compared before every run without building its type (cold, after
        # a training step's work, building and comparing two types' text took 50 us of every step).
        self._input_signature = [(value.type.shape, np.dtype(value.type.dtype)) for value in program.inputs]
        # Traced with symbolic sizes: the guards the trace recorded (set by compile), and the program made for
        # each concrete size on first use.
        self.shape_env: Optional[ShapeEnv] = None
        self.specializations = Specializations(program, on_drop=explain) if program.symbolic else None

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
        """Bytes of the buffers the schedules allocated once and reuse every run (all shards' together); for a
        symbolic trace, those of the latest run's sizes."""
        if self.specializations is not None:
            return self.specializations.get(self._latest_sizes()).planned_bytes
        return self.program.planned_bytes

    @property
    def input_types(self) -> list[TensorType]:
        return list(self.program.input_types)

    @property
    def ir(self) -> str:
        """The text IR of every graph that runs, each headed by its name; with generated kernels (backend=
        "numba"), each node a kernel computes names it, and the kernels' source follows. For a symbolic trace,
        the graphs as traced (kernels are generated per size: see kernels())."""
        return self.program.ir()

    def signature_mismatch(self, inputs) -> Optional[str]:
        """None when run() takes these inputs as compiled; else why not, in one line: the input count, which
        input's type changed from what to what (`input 0 'tokens' changed i64[2,16] -> i64[2,17]`), or which
        guard of a symbolic trace these sizes fail. A cache of compiled signatures asks this to choose an entry
        and to explain a recompile."""
        return self._mismatch(inputs)[2]

    def _mismatch(self, inputs) -> tuple[list[np.ndarray], dict[str, int], Optional[str]]:
        """The inputs as C-ordered arrays, the sizes of a symbolic trace's symbols, and why the inputs do not fit
        the compiled signature (None if they do)."""
        arrays = [np.asarray(example_array(data), order="C") for data in inputs]  # not ascontiguousarray: it
        if self.program.symbolic:                                                # makes 0-d arrays 1-d
            sizes, problem = bind_sizes(self.program.inputs, arrays)
            failing = self.shape_env.failing_guard(sizes) if problem is None and self.shape_env else None
            if failing is not None:
                problem = (f"guard {failing} fails at {describe_sizes(sizes)}: the symbolic trace assumed it "
                           f"(it held for the example)")
            return arrays, sizes, problem
        expected = self.program.inputs
        if len(inputs) != len(expected):
            signature = ", ".join(f"{value.name}: {value.type}" for value in expected)
            return [], {}, f"compiled graph takes {len(expected)} input(s) ({signature}), got {len(inputs)}"
        if all(array.shape == shape and array.dtype == dtype
               for array, (shape, dtype) in zip(arrays, self._input_signature)):
            return arrays, {}, None  # the compiled shapes and native dtypes: the common case, no types built
        for position, (value, array) in enumerate(zip(expected, arrays)):
            try:
                got = str(TensorType.of(array))
            except ShapeError:
                got = f"an array of dtype {array.dtype}"
            if got != str(value.type):
                return arrays[:position], {}, f"input {position} {value.name!r} changed {value.type} -> {got}"
        return arrays, {}, None

    def _check_inputs(self, inputs) -> tuple[list[np.ndarray], dict[str, int]]:
        arrays, sizes, mismatch = self._mismatch(inputs)
        if mismatch is None:
            return arrays, sizes
        if len(inputs) != len(self.program.inputs) or self.program.symbolic:
            raise InputError(mismatch)
        value = self.program.inputs[len(arrays)]
        got = mismatch.rpartition(" -> ")[2]
        raise InputError(f"input {len(arrays)} ({value.name!r}): expected {value.type}, got {got}. The graph was "
                         f"compiled for {value.type}; compile again with an example of the new shape or dtype")

    def _param_arrays(self) -> list[np.ndarray]:
        arrays = []
        for position, (value, tensor) in enumerate(zip(self.program.params, self._bound)):
            array = tensor.data
            checked_type, checked_array = self._checked[position]
            if tensor.type is not checked_type or array is not checked_array:
                if tensor.type != value.type:
                    raise InputError(f"parameter {value.name!r} is now {tensor.type}, but the graph was compiled "
                                     f"for {value.type}; compile again after changing the model")
                if not array.flags.c_contiguous:  # the schedule writes updates into these arrays in place
                    tensor.data = np.asarray(array, order="C")
                    array = tensor.data
                self._checked[position] = (tensor.type, array)
            arrays.append(array)
        return arrays

    def run(self, *inputs) -> Union[np.ndarray, tuple]:
        """Execute the program on NumPy arrays (or Tensors) of the compiled shapes and dtypes.

        Runs from several threads take turns: the schedules write into buffers planned once, and a training
        step updates the parameters in place, so two runs at once would overwrite each other. A lock, not
        per-thread buffers: on the medium GPT's forward, two threads sharing one Compiled took 1.6-1.7 s for 6
        runs each, two Compileds (buffers of their own) 2.2-2.7 s (benchmarks/threads.py): BLAS already keeps
        both cores busy inside one run, and two runs at once oversubscribe them."""
        arrays, sizes = self._check_inputs(inputs)
        with self._run_lock:
            params = self._current_param_arrays()
            program = self.specializations.get(sizes) if self.specializations else self.program
            outputs = program.run(arrays, params)
            # Gradients stay in the schedule's buffers (valid until the next run, as torch's .grad is until the
            # next backward); what run() returns is copied, so a caller may keep it.
            self.grads = dict(zip(self.gradient_names, outputs[self._num_results:]))
            results = [np.array(output, copy=True) for output in outputs[:self._num_results]]
        return tuple(results) if self._returns_tuple else results[0]

    __call__ = run

    @contextmanager
    def runs(self) -> Iterator[Callable[..., list[np.ndarray]]]:
        """For many runs in a row whose inputs the caller builds itself, of the compiled types (a decode loop):
        takes the run lock and binds the parameters once, and yields `run(*arrays)`, which returns the
        schedule's own output arrays (valid until its next run; not copied) and skips run()'s input checks.
        Not for a symbolic trace, nor for a training step (its gradients are not kept)."""
        if self.specializations is not None or self.gradient_names:
            raise TypeError("Compiled.runs() serves forward graphs of concrete sizes; use run()")
        with self._run_lock:
            params, program = self._current_param_arrays(), self.program
            yield lambda *arrays: program.run(arrays, params)

    def parameter_values(self) -> dict[str, np.ndarray]:
        """Copies of the arrays the next run would read, by graph parameter name: the model's tensors found again
        and checked as run() finds them (a replaced tensor is read; a changed model refused)."""
        with self._run_lock:
            arrays = self._current_param_arrays()
            return {name: np.array(array, copy=True) for name, array in zip(self.program.param_names, arrays)}

    def _current_param_arrays(self) -> list[np.ndarray]:
        """The parameter arrays for a run now (the run lock held): the bound tensors found again, then checked."""
        self._bound = self._guard.current(self._bound)
        return self._param_arrays()

    def profile(self, *inputs, repeats: int = 5):
        """Where one run's time goes (passes/profile.py): every step timed alone, `repeats` times, summed by
        category (GEMM, row-wise, elementwise, copies, generated kernels) and role; `print(profile.table())`.
        The model's parameters are not updated (a copy is stepped)."""
        from graphgpt.passes.profile import profile_program

        arrays, sizes = self._check_inputs(inputs)
        with self._run_lock:
            params = self._current_param_arrays()
            program = self.specializations.get(sizes) if self.specializations else self.program
            return profile_program(program, arrays, params, repeats)

    def kernels(self) -> str:
        """The source of every generated kernel this program runs (backend="numba"), each headed by the nodes it
        computes; empty with the NumPy backend. For a symbolic trace, those of the latest run's sizes."""
        if self.specializations is not None:
            return self.specializations.get(self._latest_sizes()).kernel_sources()
        return self.program.kernel_sources()

    def report(self) -> str:
        """Per graph that runs, a per-pass table: node count, FLOPs, memory and what each pass changed; then
        how the step runs (and, for a split step, the whole-batch graph for study). A symbolic trace is
        measured at the sizes of the latest run, and lists its guards."""
        if self.specializations is None:
            return self.program.describe()
        guards = "; ".join(str(guard) for guard in self.shape_env.guards) or "none"
        return (f"symbolic sizes {', '.join(self.shape_env.hints)}: one graph for every size passing the guards "
                f"({guards})\n{self.program.describe(self._latest_sizes())}")

    def _latest_sizes(self) -> dict[str, int]:
        return self.specializations.latest_sizes(self.shape_env.hints)

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
        from .render import diagram_title, render_graph, render_graphs

        if graph is None and stage is None:
            return render_graphs([(entry.title, entry.graph) for entry in self.program.graphs], path, collapse)
        entry = self._entry(graph)
        chosen = entry.graph
        if stage is not None:
            named = {record.name: record.graph for record in entry.stages}
            if stage not in named:
                raise ValueError(f"no stage {stage!r}; stages: {', '.join(named)}")
            chosen = named[stage]
        title = diagram_title(entry.name, chosen) + (f", after {stage}" if stage is not None else "")
        return render_graph(chosen, path, collapse=collapse, title=title)

    def memory_timeline(self, graph: Optional[str] = None):
        """Live bytes after each step of a schedule and the values holding the peak (see memory_timeline), for
        the first graph that runs (a split step's shard graph, once per shard) or the graph named; for a
        symbolic trace, at the sizes of the latest run."""
        from .memory_timeline import program_graph_timeline

        if self.specializations is not None:
            program = self.specializations.get(self._latest_sizes())
            entry = next((entry for entry in program.graphs if graph in (None, entry.name)), None)
            if entry is None:
                raise ValueError(f"no graph {graph!r}; graphs: {', '.join(e.name for e in program.graphs)}")
            return program_graph_timeline(entry)
        return program_graph_timeline(self._entry(graph))

    def explore(self, path: str = "graph.html", graph: Optional[str] = None, stage: Optional[str] = None) -> str:
        """Write the interactive explorer of the graphs that run to `path`, one self-contained HTML page (see
        graphgpt/explorer): collapsed to modules, expanded on click, backward beside forward, a step per pass.
        It opens on `graph` (a name from `graphs`) after pass `stage` ('traced' or a pass name; default the
        last). Returns the path written.

        >>> step.explore("step.html")       # doctest: +SKIP
        """
        from .explorer import explore

        return explore(self, path, graph=graph, stage=stage)

    def render_passes(self, folder: str = "passes", graph: Optional[str] = None) -> str:
        """A diagram per pass over the first graph that runs (or `graph`) (removed nodes marked before, created
        and fused after) and an HTML index of node counts, FLOPs and planned memory; returns the index's path."""
        from .pass_diagrams import render_passes

        stages = self._entry(graph).stages
        if self.specializations is not None:  # measured, and drawn, at the latest run's sizes
            stages = [record.at(self._latest_sizes()) for record in stages]
        return render_passes(stages, folder)

    def __repr__(self) -> str:
        signature = ", ".join(f"{value.name}: {value.type}" for value in self.program.inputs)
        running = ", ".join(f"{name} ({len(graph.nodes)} nodes)" for name, graph in self.graphs.items())
        return f"<graphgpt.Compiled ({signature}) running {running}>"


def compile(model: Optional[Callable] = None, *example_inputs, loss: Optional[Callable] = None,
            optimizer: Optional[Optimizer] = None, passes: Optional[Sequence] = None,
            verify_each: bool = False, check_numerics=False, shards: Optional[int] = None,
            fast_math=False, dynamic=None, cache_size_limit: Optional[int] = None,
            remat_policy: Optional[str] = None, memory_budget=None, backend: Optional[str] = None):
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
    gain (passes/program_build.py MIN_SPLIT_FLOPS with the NumPy backend; the numba backend's min_split_flops, as
    its kernels release the GIL); 1 never splits. `compiled.split` says which, and why.

    `dynamic` ("batch", "seq", both as a tuple, or True for both) traces those axes with symbolic sizes B (axis 0
    of every input) and T (axis 1): one graph (`f32[B,T,64]`) then serves every size that passes the guards the
    trace recorded (the model's `seq_len <= max_seq_len`), its memory plan and schedule made per size on first
    use (graphgpt/dynamic.py).

    `remat_policy` and `memory_budget` (training steps only) trade compute for memory (passes/rematerialize.py):
    "mincut" recomputes cheap forward ops (views, elementwise, layer norm; never matmuls) in the backward pass
    where a minimum cut says keeping their values costs more, "checkpoint_blocks" each transformer block
    (`blocks.N`) whole, "none" nothing (the default without a budget). `memory_budget`, bytes or a percentage
    of the plan without rematerialisation ("60%"), bounds the planned bytes of each graph with a backward pass
    (the whole step, or each data-parallel shard, which run at once); "mincut" then recomputes more, matmuls
    included, until the plan fits, and compile raises graphgpt.MemoryBudgetError saying the smallest plan it
    reached and what fills it if none does. Gradients stay bit-identical.

    `backend` computes the nodes: "numba" runs generated Numba kernels for layer norm, softmax, GELU, their
    gradients, fused elementwise chains, sums over leading axes, scatter_add and fused attention (one loop each,
    compiled on first use and cached on disk), NumPy and BLAS for the rest; "numpy" (the reference) runs every
    op's NumPy kernel. None (the default) is the fastest installed: numba where the numba package is, else numpy,
    unless $GRAPHGPT_BACKEND names one (passes/backends.py). `compiled.kernels()` prints the generated source.

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
                       check_numerics=check_numerics, shards=shards, fast_math=fast_math,
                       remat_policy=remat_policy, memory_budget=memory_budget, backend=backend)
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
        if remat_policy not in (None, "none") or memory_budget is not None:
            raise TypeError("remat_policy and memory_budget shorten a training step's saved activations: "
                            "compile(model, inputs, targets, loss=..., memory_budget=...)")
    remat = RematOptions.of(remat_policy, memory_budget)
    names = dynamic_names(dynamic)
    examples = [example_array(example) for example in example_inputs]
    if not names:
        return _build(model, examples, None, loss, optimizer, passes, verify_each, check_numerics, shards, fast_math,
                      remat, backend)
    input_names = default_input_names(model, len(examples) - (loss is not None)) + (["targets"] if loss else [])
    types, hints = symbolic_input_types(examples, input_names, names)
    env = make_shape_env(hints)
    env.recording = False  # on while tracing (see trace)
    with shape_env(env):
        compiled = _build(model, examples, (names, types), loss, optimizer, passes, verify_each, check_numerics,
                          shards, fast_math, remat, backend)
    compiled.shape_env = env
    return compiled


def _build(model, examples, symbolic, loss, optimizer, passes, verify_each, check_numerics, shards,
           fast_math, remat: RematOptions = RematOptions(), backend: Optional[str] = None) -> Compiled:
    """compile()'s work once its options are checked; `symbolic`: (dynamic axis names, the inputs' symbolic
    types), or None for the examples' own types."""
    types = symbolic[1] if symbolic else None
    if loss is None:
        traced = trace(model, *examples, input_types=types)
        program = build_forward_program(infer_shapes(traced.graph), passes, verify_each, check_numerics, fast_math,
                                        backend)
        return Compiled(program, traced.bindings, traced.returns_tuple, BindingGuard(model, program.param_names))

    traced = trace_loss(model, examples, loss, types)
    trainable = trainable_parameters(model)
    bindings = dict(traced.bindings)
    rule = None
    if optimizer is not None:
        optimizer.bind(trainable)
        rule = optimizer.update_rule()
        bindings.update(optimizer.state_tensors())

    def trace_shard(shards: int) -> Graph:
        # A symbolic trace takes its sizes from the shape env: the pieces give only dtypes and ranks.
        pieces = [example[:max(example.shape[0] // shards, 1 if symbolic else 0)] for example in examples]
        piece_types = None
        if symbolic:
            piece_types = symbolic_input_types(pieces, [value.name for value in traced.graph.inputs], symbolic[0])[0]
        return infer_shapes(trace_loss(model, pieces, loss, piece_types).graph)

    program = build_training_program(verify(infer_shapes(traced.graph)), [name for name, _ in trainable], rule,
                                     passes=passes, verify_each=verify_each, check_numerics=check_numerics,
                                     shards=shards, trace_shard=trace_shard, fast_math=fast_math, remat=remat,
                                     backend=backend)
    return Compiled(program, bindings, returns_tuple=False,
                    guard=BindingGuard(model, program.param_names, optimizer))
