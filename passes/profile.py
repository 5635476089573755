"""Where a step's time goes: every step of the schedules a Program runs, timed one at a time, summed by category
(GEMMs, row-wise kernels, elementwise ops, copies, generated kernels) and by role (forward, backward, the forward
ops the backward repeats, optimizer), so a gap is explained by measurement rather than guessed from FLOPs.

    profile = profile_program(program, inputs, params, repeats=5)
    print(profile.table())
    profile.seconds_by("role")["recompute"]      # what rematerialisation costs in time, per step

Each part of a run is timed alone: an unsplit step's one schedule as it runs; a data-parallel step's first shard
(on one BLAS thread, as it runs beside the others, which run the same graph at the same time) and its combine
graph. Steps run through the schedule's interpreter loop (~2 us of Python more per step than the generated code
that normally runs them); each repetition also runs the same parts whole, through that generated code, so
`run_seconds - seconds` is the Python between the steps' kernel calls (NumPy's own per-call dispatch is inside
each step's time). Parameters are copies: profiling a step with an optimizer leaves the model untouched.
Times are medians over the repetitions, per step; on a busy machine they are not results.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graphgpt.ir import Node, OpKind, get_op

from .blas_threads import BLAS_LIMIT
from .steps import VIEW

# What kind of work a step is, for the table: the order rows are printed in.
CATEGORIES = ("GEMM", "row-wise", "elementwise", "copies and views", "generated kernels")


def category_of(node: Node, mode: str, generated: bool) -> str:
    """GEMM (matmuls), row-wise (softmax, layer norm, cross entropy, reductions and their gradients), elementwise
    (maps, broadcasts), copies and views (reshapes, transposes, gathers, scatters), or a generated kernel."""
    if generated:
        return "generated kernels"
    kind = get_op(node.op).kind
    if kind == OpKind.MATMUL:
        return "GEMM"
    if kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST) and mode != VIEW:
        return "elementwise"
    if kind in (OpKind.REDUCTION, OpKind.OPAQUE):
        return "row-wise"
    return "copies and views"


@dataclass(frozen=True)
class StepTime:
    graph: str       # the program graph's name
    node: Node
    category: str
    seconds: float   # median over the repetitions

    @property
    def role(self) -> str:
        return self.node.provenance.role


@dataclass
class Profile:
    steps: list[StepTime]
    repeats: int
    split: bool  # a data-parallel step: the shard's time is one shard's, the others running at the same time
    run_seconds: float  # the same parts run whole as run() runs them (median per part, summed)

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    @property
    def between_steps_seconds(self) -> float:
        """The parts' whole runs less their steps' summed times: the Python of the run's code between kernel
        calls (reading slots, the scratch arena). Negative when the interpreter's per-step cost, which the steps'
        times include (~1-2 us a step more than the generated code's), or noise outweighs it."""
        return self.run_seconds - self.seconds

    def seconds_by(self, key: str) -> dict[str, float]:
        """Seconds summed by 'category', 'role', 'op' or 'graph'."""
        totals: dict[str, float] = defaultdict(float)
        for step in self.steps:
            totals[step.node.op if key == "op" else getattr(step, key)] += step.seconds
        return dict(totals)

    def table(self) -> str:
        """Milliseconds and shares by category and by role, and the costliest ops."""
        total = self.seconds
        lines = [f"profile: {len(self.steps)} steps timed one at a time, median of {self.repeats}; "
                 f"{total * 1e3:.1f} ms in all" + (" (one shard's graph, then the combine graph)" if self.split
                                                    else "")]
        by_category = self.seconds_by("category")
        for heading, totals, order in (("by category", by_category, CATEGORIES),
                                       ("by role", self.seconds_by("role"), sorted(self.seconds_by("role")))):
            lines.append(f"  {heading}:")
            lines += [f"    {name:<20} {totals[name] * 1e3:9.2f} ms {totals[name] / total:6.1%}"
                      for name in order if name in totals]
        between = self.between_steps_seconds
        lines.append(f"  run whole: {self.run_seconds * 1e3:.1f} ms, of which {between * 1e3:.2f} ms "
                     f"({between / self.run_seconds:.1%}) is Python between the steps")
        costliest = sorted(self.seconds_by("op").items(), key=lambda item: -item[1])[:8]
        lines.append("  costliest ops: " + ", ".join(f"{op} {seconds * 1e3:.1f} ms" for op, seconds in costliest))
        return "\n".join(lines)


def profile_program(program, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray],
                    repeats: int = 5) -> Profile:
    """Time every step of one run of `program`, `repeats` times (after one untimed run); `params` are copied."""
    if program.symbolic:
        raise ValueError("a symbolic program has no schedule to profile: profile the compiled step after a run, "
                         "at the sizes it ran")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be a whole number of at least 1, got {repeats!r}")
    params = [np.array(array, copy=True) for array in params]  # an optimizer's update writes them
    steps, run_seconds = [], 0.0
    for name, schedule, part_inputs, part_params, one_blas_thread in program.parts(inputs, params):
        generated = {id(node) for node, _ in schedule.kernels}
        times: dict[int, list[float]] = defaultdict(list)

        def observe(step, seconds):
            times[id(step)].append(seconds)

        whole_runs = []
        with BLAS_LIMIT.one_thread() if one_blas_thread else contextlib.nullcontext():
            schedule.run(part_inputs, part_params)  # warm: the first run touches every buffer
            for _ in range(repeats):  # alternating, so a busy spell falls on both measurements alike
                schedule.run_observed(part_inputs, part_params, observe)
                started = time.perf_counter()
                schedule.run(part_inputs, part_params)
                whole_runs.append(time.perf_counter() - started)
        run_seconds += statistics.median(whole_runs)
        steps += [StepTime(name, step.node, category_of(step.node, step.mode, id(step.node) in generated),
                           statistics.median(times[id(step)])) for step in schedule.steps]
    return Profile(steps, repeats, program.split.shards > 1, run_seconds)
