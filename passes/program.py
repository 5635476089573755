"""The compiled artifact: a Program holds the graphs that actually run, the schedules that run them, and the record
of every pass over every graph. What a user prints, renders or measures is read from here, so what they see is
what runs.

A forward program and an unsplit training step run one graph. A data-parallel training step runs a shard graph
(on every shard, each on its own thread) and a combine graph (once, on the shards' summed outputs, with the
optimizer's update); the whole-batch step graph is kept beside them for study, but does not run.

    program = build_training_program(forward, wrt, rule, trace_shard=...)   # passes/program_build.py
    outputs = program.run(inputs, params)        # the loss, then one gradient per name in program.gradient_names
    print(program.describe())                    # every graph that runs, pass by pass, and how the step is split
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, TensorType, Value, verify
from graphgpt.ir.printer import format_graph
from graphgpt.ir.dims import is_symbolic, substitute

from .analysis import graph_flops
from .blas_threads import BLAS_LIMIT, MACHINE_LOAD, SMALL_RUN_FLOPS
from .data_parallel import shard_extent
from .manager import StageRecord, format_report, record_stage
from .memory_plan import MemoryPlan
from .numba_backend.engine import imported_sources, module_name
from .rematerialize import MemoryBudgetError, RematOptions, rematerialize
from .saved_activations import describe_rematerialization
from .schedule import Schedule
from .sharded_run import ShardedRun
from .specialize import describe_sizes, is_symbolic_graph, specialize_graph, specialize_type

@dataclass(frozen=True)
class Split:
    """How a training step runs: `shards` data-parallel shards (1: the whole batch at once), and why."""

    shards: int
    reason: str

    def describe(self) -> str:
        if self.shards == 1:
            return f"data parallel: not split ({self.reason})"
        return f"data parallel: {self.shards} shards on {self.shards} threads ({self.reason})"


@dataclass
class ProgramGraph:
    """One graph of a program, named ('training step', 'shard (batch 4 of 8)', 'combine'), with the record of
    every pass that made it; the last record's graph is the graph, and its memory plan the schedule's."""

    name: str
    stages: list[StageRecord]
    runs: int = 1  # how many copies run per call (a shard graph runs once per shard)

    @property
    def graph(self) -> Graph:
        return self.stages[-1].graph

    @property
    def title(self) -> str:
        """Its name and how it runs: 'shard (batch 4 of 8), one copy per shard, 2 at once'."""
        return f"{self.name}, one copy per shard, {self.runs} at once" if self.runs > 1 else self.name

    @property
    def plan(self) -> MemoryPlan:
        return self.stages[-1].plan


class Program:
    """The graphs that run (`graphs`), in order, with their schedules. `whole` is the whole step as one graph:
    graphs[0] unless the step is split, when it is optimised only if asked for (it is for study, and does not
    run). run(inputs, params) takes parameter arrays in the order of `params` and returns the outputs: the
    results, then one gradient per name in `gradient_names`.

    `inputs` and `params` are the whole step's (names and types as the user's arrays must have them)."""

    def __init__(self, graphs: list[ProgramGraph], whole: Union[ProgramGraph, Callable[[], ProgramGraph]],
                 split: Split, signature: Graph, gradient_names: Sequence[str] = (), check_numerics=False,
                 fast_math: frozenset[str] = frozenset(), remat: RematOptions = RematOptions(), backend=None):
        self.graphs = graphs
        self.backend = backend  # generated kernels for the nodes that have them (passes/backends.py); None: NumPy
        self.fast_math = fast_math  # the fast-math flags its passes were allowed (passes/manager.py)
        self.remat = remat  # rematerialisation: made per concrete size for a symbolic program (specialize)
        self._whole = whole
        self._whole_lock = threading.Lock()  # optimised once, whichever thread asks first
        self.split = split
        self.gradient_names = list(gradient_names)
        self.inputs = list(signature.inputs)
        self.params = list(signature.params)
        self.result_count = len(signature.outputs) - len(self.gradient_names)
        self._signature_outputs = list(signature.outputs)
        self.check_numerics = check_numerics
        # Traced with symbolic sizes (ir/dims.py): no schedule until specialize() gives the sizes.
        self.symbolic = any(is_symbolic_graph(entry.graph) for entry in graphs)
        if self.symbolic:
            self._runner = None
        elif len(graphs) == 1:
            self._runner = Schedule(graphs[0].graph, graphs[0].plan, check_numerics, backend)
        else:
            shard, combine = graphs
            self._runner = ShardedRun(shard.graph, shard.plan, combine.graph, combine.plan, split.shards,
                                      self.param_names, check_numerics, backend)
        # An unsplit graph too small to split runs on one BLAS thread while the machine is busy
        # (passes/blas_threads.py); a split step's shards do anyway.
        self.small_run = not self.symbolic and len(graphs) == 1 and graph_flops(graphs[0].graph) < SMALL_RUN_FLOPS

    @property
    def one_blas_thread(self) -> bool:
        """Whether a run now takes one BLAS thread: a small graph on a busy machine."""
        return self.small_run and MACHINE_LOAD.busy()

    def specialize(self, sizes: dict[str, int]) -> "Program":
        """This symbolic program at concrete sizes: each graph specialised (passes/specialize.py), then planned and
        scheduled as a traced one is. The passes are not run again: they ran once, on the symbolic graphs. A
        split step's shard graph holds the shard's batch: a batch that does not cut into the shards runs the
        whole step instead."""
        def at_sizes(entry: ProgramGraph, entry_sizes: dict[str, int], name: str) -> ProgramGraph:
            graph = specialize_graph(entry.graph, entry_sizes)
            stages = [StageRecord(f"specialised at {describe_sizes(entry_sizes)}", graph)]
            return ProgramGraph(name, rematerialized(stages, self.remat, False, name), entry.runs)

        split = self.split
        if split.shards == 1:
            graphs = [at_sizes(self.graphs[0], sizes, self.graphs[0].name)]
        else:
            batch = self.inputs[0].type.shape[0]
            total = substitute(batch, sizes)
            shard_sizes = {name: (size // split.shards if name in batch.symbols else size)
                           for name, size in sizes.items()} if is_symbolic(batch) else sizes
            if total % split.shards == 0 and total >= split.shards:
                shard, combine = self.graphs
                graphs = [at_sizes(shard, shard_sizes, shard_name(total, split.shards)),
                          at_sizes(combine, sizes, combine.name)]
            else:
                graphs = [at_sizes(self.whole, sizes, self.whole.name)]
                split = Split(1, f"batch {total} does not cut into {split.shards} equal shards: the whole step "
                                 f"runs at this size")
        signature = Graph(inputs=[Value(v.id, specialize_type(v.type, sizes), v.kind, v.name) for v in self.inputs],
                          params=[Value(v.id, specialize_type(v.type, sizes), v.kind, v.name) for v in self.params],
                          outputs=list(self._signature_outputs))
        return Program(graphs, graphs[0], split, signature, self.gradient_names, self.check_numerics,
                       self.fast_math, self.remat, self.backend)

    @property
    def whole(self) -> ProgramGraph:
        with self._whole_lock:
            if callable(self._whole):
                self._whole = self._whole()
            return self._whole

    @property
    def param_names(self) -> list[str]:
        return [value.name for value in self.params]

    @property
    def input_types(self) -> list[TensorType]:
        return [value.type for value in self.inputs]

    @property
    def schedules(self) -> list[Schedule]:
        """Every schedule that runs: one, or one per shard and the combine graph's."""
        if isinstance(self._runner, Schedule):
            return [self._runner]
        return [*self._runner.shard_schedules, self._runner.combine]

    @property
    def planned_bytes(self) -> int:
        """Bytes of the buffers (and kernel scratch) the schedules allocated once and reuse every run."""
        return sum(schedule.planned_bytes for schedule in self.schedules)

    def generated_kernels(self) -> dict[str, list]:
        """Each generated kernel's source -> the nodes running it, in schedule order; kernel numbers (from 1)
        follow this order."""
        users: dict[str, list] = {}
        for schedule in ([] if self.symbolic else self.schedules):
            for node, kernel in schedule.kernels:
                nodes = users.setdefault(kernel.source, [])
                if node not in nodes:  # every shard's schedule runs the same nodes
                    nodes.append(node)
        return users

    def kernel_numbers(self) -> dict[int, int]:
        """id() of each node a generated kernel computes -> that kernel's number (as kernel_sources numbers them).
        By node object: a shard graph and the combine graph may use the same value ids."""
        return {id(node): number for number, nodes in enumerate(self.generated_kernels().values(), 1) for node in nodes}

    def ir(self) -> str:
        """The text IR of every graph that runs, each headed by its name; a node a generated kernel computes
        says which, and the kernels' source follows."""
        numbers = self.kernel_numbers()

        def text(graph: Graph) -> str:
            return format_graph(graph, notes={node.output.id: f"kernel {numbers[id(node)]}" for node in graph.nodes
                                              if id(node) in numbers})

        graphs = "\n\n".join(f"# ---- {entry.name} ----\n{text(entry.graph)}" for entry in self.graphs)
        kernels = self.kernel_sources()
        return f"{graphs}\n\n# ---- generated kernels ----\n{kernels}" if kernels else graphs

    def kernel_sources(self) -> str:
        """The source of every generated kernel the schedules run, once each, headed by the nodes it computes
        (empty with the NumPy backend, and for a symbolic program, which has no schedule of its own)."""
        users = self.generated_kernels()
        parts, imported = [], []
        for number, (source, nodes) in enumerate(users.items(), 1):
            where = ", ".join(f"{node.output.label} ({node.provenance.module_path or node.op})" for node in nodes)
            parts.append(f"# ==== kernel {number} of {len(users)}: {nodes[0].op}, for {len(nodes)} node(s): "
                         f"{where} ====\n{source}")
            imported += [text for text in imported_sources(source) if text not in imported]
        parts += [f"# ==== {module_name(text)}, imported by the kernels above ====\n{text}" for text in imported]
        return "\n".join(parts)

    def parts(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[tuple]:
        """(graph name, schedule, its inputs, its parameters, whether it runs on one BLAS thread) for each part of
        one run, to run each alone (passes/profile.py): the one schedule, or the first shard's and the combine
        graph's (a split step's shards are run here once, one after another, to feed the combine graph)."""
        if isinstance(self._runner, Schedule):
            return [(self.graphs[0].name, self._runner, list(inputs), list(params), self.one_blas_thread)]
        (shard, shard_inputs, shard_params), (combine, sums, combine_params) = self._runner.parts(inputs, params)
        return [(self.graphs[0].name, shard, shard_inputs, shard_params, True),
                (self.graphs[1].name, combine, sums, combine_params, False)]

    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One run. Not reentrant: the schedules write into buffers planned once (graphgpt.Compiled lets one
        run at a time in)."""
        if self.one_blas_thread:
            with BLAS_LIMIT.one_thread():
                return self._runner.run(inputs, params)
        return self._runner.run(inputs, params)

    def describe(self, sizes: Optional[dict[str, int]] = None) -> str:
        """Each graph that runs, pass by pass (nodes, FLOPs, memory, changes), then how the step is split. A
        symbolic program's graphs are measured at `sizes`."""
        parts = []
        at = f" (measured at {describe_sizes(sizes)})" if self.symbolic and sizes else ""
        for entry in self.graphs:
            parts.append(f"== {entry.title}{at} ==\n{format_report(entry.stages, sizes)}")
            if entry.stages[-1].name == REMATERIALIZE and len(entry.stages) > 1:
                before, after = entry.stages[-2], entry.stages[-1]
                parts.append(describe_rematerialization(before.graph, before.plan, after.graph, after.plan))
        if self.split.shards > 1:
            parts.append(f"== {self.whole.name} (for study: not run) ==\n"
                         f"{format_report(self.whole.stages, sizes)}")
        if self.symbolic and self.remat.active:
            parts.append(f"rematerialisation ({self.remat.describe()}): made for each concrete size on first use")
        if self.gradient_names:
            parts.append(self.split.describe())
        if self.small_run:
            parts.append(f"BLAS: one thread while the machine is busier than its cores, else BLAS's own "
                         f"({graph_flops(self.graphs[0].graph) / 1e9:.2f} GFLOP per run; busy now: "
                         f"{'yes' if MACHINE_LOAD.busy() else 'no'})")
        if self.fast_math:
            parts.append(f"fast math: {', '.join(sorted(self.fast_math))} (results may differ in the last bits)")
        return "\n".join(parts)


REMATERIALIZE = "rematerialize"


def rematerialized(records: list[StageRecord], remat: RematOptions, verify_each: bool,
                    name: str) -> list[StageRecord]:
    """`records` and, when the options ask for it and the last graph has a backward pass to shorten, the record of
    the rematerialisation pass (last: the common-subexpression pass would merge its copies back). A budget that
    cannot be met raises MemoryBudgetError naming the graph."""
    last = records[-1]
    if not remat.active or is_symbolic_graph(last.graph):
        return records
    started = time.perf_counter()
    try:
        result = rematerialize(last.graph, remat.policy, remat.memory_budget, plan=last.plan)
    except MemoryBudgetError as error:
        raise MemoryBudgetError(f"{name or 'graph'}: {error}") from None
    if result.graph is last.graph:  # no backward pass, or nothing recomputed within the budget
        return records
    if verify_each:
        verify(result.graph)
    return records + [record_stage(REMATERIALIZE, last.graph, result, time.perf_counter() - started)]


def shard_name(batch, shards: int) -> str:
    """'shard (batch 4 of 8)', or for a symbolic batch (the shard's B, the whole batch's 2*B) 'shard (batch B of
    2*B)'."""
    return f"shard (batch {shard_extent(batch, shards)} of {shards * batch if is_symbolic(batch) else batch})"
