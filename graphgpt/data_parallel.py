"""Data-parallel execution of a training step across the machine's cores.

The batch is cut into equal shards along axis 0; each shard runs the same compiled forward+backward graph on its
own thread, with its own planned buffers, and a small combine graph adds up the shards' gradients (each already
scaled by 1/shards through the backward seed when the loss is a mean), averages or adds up the loss, and applies
the optimizer's update. passes/data_parallel.py proves from the graph that the split is exact.

Why: with BLAS on two threads a GPT step already runs its matmuls on both cores, but the third of the step spent
in NumPy's elementwise and row-wise passes runs on one; two shards on one BLAS thread each keep both cores busy
all the time (benchmarks/train_step.py measures it). NumPy and OpenBLAS release the GIL inside their calls, so
Python threads run the shards truly in parallel.

While the shards run, the BLAS thread pool is limited to one thread (threadpoolctl: two threads each asking
OpenBLAS for two threads would oversubscribe the cores) and restored afterwards.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from graphgpt.ir import Graph, GraphBuilder
from graphgpt.passes.memory_plan import MemoryPlan, plan_memory

from .executor import Executor

# Below this many floating-point operations per step, splitting loses: small arrays make short NumPy calls that
# keep the GIL (NumPy releases it only for larger loops), so the shards' threads take turns instead of running
# together. Measured, split / whole step time: 1.56 at 0.18 GFLOP (the tiny GPT), 1.44 at 1.4 GFLOP, 0.78 at
# 5.8, 0.75 at 10.7 and 0.70 at 31.9 (the medium GPT).
MIN_SPLIT_FLOPS = 4 * 10**9


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Split:
    """How a compiled step runs: `shards` data-parallel shards (1: the whole batch at once), and why not more."""

    shards: int
    reason: str

    def describe(self) -> str:
        if self.shards == 1:
            return f"data parallel: not split ({self.reason})"
        return f"data parallel: {self.shards} shards on {self.shards} threads ({self.reason})"


def combine_graph(shard: Graph, shards: int) -> Graph:
    """Inputs: the shards' outputs summed (the loss, then the gradients: passes/data_parallel.py scales each
    shard's graph so that the sums are the whole batch's). Outputs: those sums. Its parameters are the shard
    graph's, so an optimizer can be appended to it."""
    builder = GraphBuilder(header=f"combine {shards} data-parallel shards")
    totals = [builder.add_input(f"sum over shards of {value.name or 'output ' + str(position)}", value.type)
              for position, value in enumerate(shard.outputs)]
    for value in shard.params:
        builder.add_param(value.name, value.type)
    return builder.finish(totals)


class DataParallelExecutor:
    """Runs like an Executor (`run(inputs, params) -> outputs`, updates written into the parameter arrays), over
    `shards` copies of the shard graph's executor and the combine graph's. run() takes the parameter arrays in
    the order of `param_names` (the whole step graph's); each graph reads its own by name."""

    def __init__(self, shard: Graph, combine: Graph, shards: int, param_names: Sequence[str], check_numerics=False):
        plan = plan_memory(shard)
        self.shard_executors = [Executor(shard, plan, check_numerics) for _ in range(shards)]
        output_ids = [value.id for value in shard.outputs]
        self._same_as = [output_ids.index(value_id) for value_id in output_ids]  # first output with that value
        self._in_place = _summable_in_place(shard, plan)
        self.combine = Executor(combine, check_numerics=check_numerics)
        position = {name: index for index, name in enumerate(param_names)}
        self.shard_param_positions = [position[value.name] for value in shard.params]
        self.combine_param_positions = [position[value.name] for value in combine.params]
        self.shards = shards
        self._pool: Optional[ThreadPoolExecutor] = None

    @property
    def planned_bytes(self) -> int:
        return sum(executor.planned_bytes for executor in self.shard_executors) + self.combine.planned_bytes

    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        size = inputs[0].shape[0] // self.shards
        pieces = [[array[index * size:(index + 1) * size] for array in inputs] for index in range(self.shards)]
        shard_params = [params[position] for position in self.shard_param_positions]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.shards - 1, thread_name_prefix="graphgpt-shard")
        with _one_blas_thread():
            pending = [self._pool.submit(executor.run, piece, shard_params)
                       for executor, piece in zip(self.shard_executors[1:], pieces[1:])]
            try:
                results = [self.shard_executors[0].run(pieces[0], shard_params)]
            finally:  # every shard finishes before the BLAS threads are restored, even after a failure
                wait(pending)
            results += [future.result() for future in pending]  # re-raises a shard's failure
        combine_params = [params[position] for position in self.combine_param_positions]
        return self.combine.run(self._sums(results), combine_params)

    def _sums(self, results: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Each output summed over the shards, in place where _summable_in_place allows, else into a new array;
        an output that is an earlier output's value reuses that sum."""
        totals: list[np.ndarray] = []
        for position, arrays in enumerate(zip(*results)):
            if self._same_as[position] < position:
                totals.append(totals[self._same_as[position]])
                continue
            total = arrays[0] if self._in_place[position] else np.array(arrays[0], copy=True)
            for other in arrays[1:]:
                np.add(total, other, out=total)
            totals.append(total)
        return totals


def _summable_in_place(graph: Graph, plan: MemoryPlan) -> list[bool]:
    """Per output of `graph`: whether the first shard's array for it lies in a planned buffer that no other
    output value uses, so the sum over shards may be written there once the run is over. Views of inputs,
    parameters and constants are not."""
    def buffer_of(value_id: int) -> int:
        storage = plan.storage[value_id]
        if storage.kind == "view":
            storage = plan.storage[storage.source]
        return storage.buffer if storage.kind == "buffer" else -1

    owners: dict[int, set[int]] = {}
    for value in graph.outputs:
        owners.setdefault(buffer_of(value.id), set()).add(value.id)
    return [buffer_of(value.id) >= 0 and len(owners[buffer_of(value.id)]) == 1 for value in graph.outputs]


_controller = None


def _one_blas_thread():
    """A context limiting the BLAS NumPy uses to one thread (a no-op where threadpoolctl finds no BLAS)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
