"""Running a data-parallel Program: the batch cut into equal shards along axis 0, each shard run by its own copy
of the shard graph's schedule on its own thread, the shards' outputs summed, then the combine graph's schedule.

passes/data_parallel.py proves the split exact and scales the shard graph so that the whole batch's loss and
gradients are the sums of the shards'. Why split at all: with BLAS on two threads a GPT step already runs its
matmuls on both cores, but the third of the step spent in NumPy's elementwise and row-wise passes runs on one;
two shards on one BLAS thread each keep both cores busy all the time (benchmarks/train_step.py measures it).
NumPy and OpenBLAS release the GIL inside their calls, so Python threads run the shards truly in parallel.

While shards run, BLAS is limited to one thread (two threads each asking OpenBLAS for two threads would
oversubscribe the cores): passes/blas_threads.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Optional, Sequence

import numpy as np

from graphgpt.ir import Graph

from .blas_threads import BLAS_LIMIT
from .memory_plan import MemoryPlan
from .schedule import Schedule


class ShardedRun:
    """Runs like a Schedule (`run(inputs, params) -> outputs`, updates written into the parameter arrays), over
    `shards` schedules of the shard graph and one of the combine graph. run() takes the parameter arrays in the
    order of `param_names`; each graph reads its own by name."""

    def __init__(self, shard: Graph, shard_plan: MemoryPlan, combine: Graph, combine_plan: MemoryPlan, shards: int,
                 param_names: Sequence[str], check_numerics=False, backend=None):
        # The shards keep every core busy: their kernels run on the shard's own thread.
        shard_backend = backend.single_threaded() if backend is not None else None
        self.shard_schedules = [Schedule(shard, shard_plan, check_numerics, shard_backend) for _ in range(shards)]
        output_ids = [value.id for value in shard.outputs]
        self._same_as = [output_ids.index(value_id) for value_id in output_ids]  # first output with that value
        self._in_place = _summable_in_place(shard, shard_plan)
        self.combine = Schedule(combine, combine_plan, check_numerics, backend)
        position = {name: index for index, name in enumerate(param_names)}
        self.shard_param_positions = [position[value.name] for value in shard.params]
        self.combine_param_positions = [position[value.name] for value in combine.params]
        self.shards = shards
        self._pool: Optional[ThreadPoolExecutor] = None

    @property
    def planned_bytes(self) -> int:
        return sum(schedule.planned_bytes for schedule in self.shard_schedules) + self.combine.planned_bytes

    def _pieces(self, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Each shard's slice of every input, along the batch axis."""
        size = inputs[0].shape[0] // self.shards
        return [[array[index * size:(index + 1) * size] for array in inputs] for index in range(self.shards)]

    def parts(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[tuple]:
        """(schedule, its inputs, its parameters) of one run, for running each part alone (passes/profile.py):
        the first shard's (the others run the same graph at the same time) and the combine graph's, fed with
        the shards' sums from a run made here one shard after another."""
        pieces = self._pieces(inputs)
        shard_params = [params[position] for position in self.shard_param_positions]
        sums = self._sums([[np.array(array, copy=True) for array in schedule.run(piece, shard_params)]
                           for schedule, piece in zip(self.shard_schedules, pieces)])
        combine_params = [params[position] for position in self.combine_param_positions]
        return [(self.shard_schedules[0], pieces[0], shard_params), (self.combine, sums, combine_params)]

    def run(self, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
        pieces = self._pieces(inputs)
        shard_params = [params[position] for position in self.shard_param_positions]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.shards - 1, thread_name_prefix="graphgpt-shard")
        with BLAS_LIMIT.one_thread():
            pending = [self._pool.submit(schedule.run, piece, shard_params)
                       for schedule, piece in zip(self.shard_schedules[1:], pieces[1:])]
            try:
                results = [self.shard_schedules[0].run(pieces[0], shard_params)]
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
