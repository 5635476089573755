"""What only the static graph can do, each shown on the comparison's own model with its figure: memory planned
ahead, rewrites by pass, generated kernels (Numba, when installed), the data-parallel split proved from the
graph, rematerialisation under a memory budget, and shape errors found before anything runs.

Figures needing a clock are contenders of the comparison's one interleaved timing pass (compare/__init__.py);
the rest are counted here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from graphgpt.passes.rematerialize import MemoryBudgetError

from .. import compile as compile_graph
from ..ir import ShapeError
from ..nn import functional as F
from ..tensor import Tensor, counting_eager_ops
from ..timing import Spread, milliseconds
from .measurement import COMPILED, REMAT, Subject, mib
from .teaching_models import MisWiredClassifier

NUMBA, SHARDED = "numba kernels", "2 shards"
TAPE_TO_ERROR, COMPILE_TO_ERROR = "tape until the shape error", "compile until the shape error"
# Of the plan without rematerialisation: the first makes the cut recompute more, the second is more than it can
# reach on the comparison's sizes, and compile refuses it before anything runs.
BUDGETS = ("80%", "50%")


@dataclass
class Remat:
    label: str
    planned_bytes: Optional[int]  # None: no plan fits (see note)
    flops: int
    note: str = ""


@dataclass
class StaticOnly:
    keep_all_bytes: int        # every intermediate of the step kept alive at once (a tape's view of memory)
    planned_bytes: int
    live_peak_bytes: int       # the compiled step's memory timeline at its peak
    planned_buffers: int
    tape_result_bytes: int
    rewrites: list             # (pass, nodes after it, {change: count}) from the compiled step's stages
    remat: list                # Remat rows: without, the default cut, under each of BUDGETS
    split: str                 # how compile(..., shards=2) runs the step, or why it cannot
    split_difference: Optional[float]   # largest |loss or gradient difference| split against whole
    kernels: Optional[int]     # generated kernels with backend="numba"; None without numba
    fused_nodes: int
    kernels_note: str
    shape_error: str           # the ShapeError text compile raised (the tape raised the same text)
    tape_ops_before_error: int  # ops the tape computed before reaching the failing one
    compile_ops_before_error: int  # ops compile computed before finding it (it traces types only)
    times: dict = field(default_factory=dict)  # contender -> Spread, and the compiled step's

    def spreads(self) -> dict[str, Spread]:
        return {name: spread for name, spread in self.times.items() if name != COMPILED}

    def paragraphs(self) -> dict[str, str]:
        """One paragraph per thing only the static graph can do, by section id."""
        passes = ", ".join(f"{name} {', '.join(f'{what} {count}' for what, count in changes.items())}"
                           for name, _, changes in self.rewrites[1:] if changes) or "none changed anything"
        first, last = self.rewrites[0][1], self.rewrites[-1][1]
        remat = "; ".join(f"{row.label}: {row.note}" if row.planned_bytes is None else
                          f"{row.label}: {mib(row.planned_bytes)}{f' ({row.note})' if row.note else ''}"
                          for row in self.remat)
        if self.kernels is None:
            kernels = self.kernels_note
        else:
            kernels = (f"With backend='numba' the compiler fused {self.fused_nodes} chains of elementwise ops into "
                       f"single nodes and wrote {self.kernels} kernels for this graph (the fused chains, layer norms, "
                       f"softmaxes, GELUs and their gradients, one loop each); the step took "
                       f"{self.times[NUMBA]} against {self.times[COMPILED]} with NumPy's kernels. {self.kernels_note}")
        split = self.split + (f"; split and whole agree to {self.split_difference:.1e} in the loss and every "
                              f"gradient, and the split step took {self.times[SHARDED]} against "
                              f"{self.times[COMPILED]} whole" if self.split_difference is not None else "")
        return {
            "memory-plan": (f"Knowing every value's lifetime before the step runs, the compiler placed them in "
                            f"{self.planned_buffers} buffers, {mib(self.planned_bytes)} allocated once and reused "
                            f"every step, for a live peak of {mib(self.live_peak_bytes)}. Keeping every "
                            f"intermediate would take {mib(self.keep_all_bytes)}; the tape allocates a fresh array "
                            f"for every result and keeps {mib(self.tape_result_bytes)} of them for backward."),
            "rewrites": (f"The passes rewrote the step from {first} nodes as traced to {last}: {passes}. Each "
                         f"rewrite is checked against the whole graph, which a tape never has."),
            "kernels": kernels,
            "split": (f"{split}. The compiler proves from the graph that every example's rows stay apart until "
                      f"the loss's batch reduction, so shards may run the step apart and add up; a tape sees one "
                      f"op at a time and cannot prove it."),
            "remat": (f"Planned memory of the step, trading compute for memory: {remat}. The compiler chooses "
                      f"which forward values to recompute in the backward from the whole graph, before running."),
            "shape-errors": (f"A classifier of the wrong width after the GPT: both raise the same one-line error "
                             f"naming the line. The tape computed {self.tape_ops_before_error} ops before reaching "
                             f"it ({self.times[TAPE_TO_ERROR]}); compile computed {self.compile_ops_before_error}, "
                             f"tracing shapes and types only ({self.times[COMPILE_TO_ERROR]}), so a training script "
                             f"fails before its first step rather than somewhere inside it."),
        }


class StaticOnlyRuns:
    """The static-only figures of the base subject; `contenders` to time, then `result(spreads)`."""

    def __init__(self, subject: Subject):
        self.subject = subject
        self.numba = self._compile_numba()
        self.split, self.split_text, self.split_difference = self._compile_split()
        self.remat_rows = self._remat_rows()
        self.miswired = MisWiredClassifier(subject.model)
        self.tape_ops, self.shape_error = self._tape_until_error()
        self.compile_ops = self._compile_until_error()

    def _compile(self, **options):
        subject = self.subject
        return compile_graph(subject.model, subject.tokens, subject.targets, loss=F.cross_entropy, **options)

    def _compile_numba(self):
        if importlib.util.find_spec("numba") is None:
            return None
        numba = self._compile(backend="numba")
        numba.run(self.subject.tokens, self.subject.targets)  # kernels compile on first use (cached on disk)
        return numba

    def _compile_split(self):
        subject = self.subject
        try:
            split = self._compile(shards=2)
        except (ValueError, RuntimeError) as error:  # the batch does not cut in two, or the proof fails
            return None, f"compile(..., shards=2) refused: {error}", None
        loss = float(split.run(subject.tokens, subject.targets))
        whole = float(subject.step.run(subject.tokens, subject.targets))
        differences = [abs(loss - whole)] + [float(np.abs(split.grads[name] - subject.step.grads[name]).max())
                                             for name in subject.step.grads]
        return split, split.split.describe(), max(differences)

    def _remat_rows(self) -> list[Remat]:
        subject = self.subject
        plain, cut = subject.step, subject.remat
        base_flops = plain.stages[-1].flops

        def row(label: str, compiled) -> Remat:
            flops = compiled.stages[-1].flops
            extra = f"+{flops / base_flops - 1:.1%} FLOPs" if compiled is not plain else ""
            return Remat(label, compiled.planned_bytes, flops, extra)

        rows = [row("without", plain), row("the default cut (remat_policy='mincut')", cut)]
        for budget in BUDGETS:
            label = f"under memory_budget='{budget}'"
            try:
                rows.append(row(label, self._compile(remat_policy="mincut", memory_budget=budget)))
            except MemoryBudgetError as error:  # compile says, before running anything, that no plan fits
                rows.append(Remat(label, None, 0, "refused by compile, before running: "
                                  + str(error).split(": ", 1)[-1].split("; at its peak")[0]))
        return rows

    def _tape_until_error(self) -> tuple[int, str]:
        with counting_eager_ops() as count:
            try:
                self.miswired(Tensor(self.subject.tokens))
            except ShapeError as error:
                return count.ops, str(error)
        raise AssertionError("the mis-wired classifier ran eagerly: a ShapeError was expected")

    def _compile_until_error(self) -> int:
        """Ops computed while compiling the mis-wired model up to its error (the trace computes none)."""
        with counting_eager_ops() as count:
            try:
                compile_graph(self.miswired, self.subject.tokens)
            except ShapeError as error:
                if str(error) != self.shape_error:  # the report shows both when they differ
                    self.shape_error += f"\n(compile: {error})"
                return count.ops
        raise AssertionError("the mis-wired classifier compiled: a ShapeError was expected")

    def contenders(self) -> dict[str, Callable[[], object]]:
        subject = self.subject
        runs = {TAPE_TO_ERROR: lambda: _raises(lambda: self.miswired(Tensor(subject.tokens))),
                COMPILE_TO_ERROR: lambda: _raises(lambda: compile_graph(self.miswired, subject.tokens))}
        if self.numba is not None:
            runs[NUMBA] = lambda: self.numba.run(subject.tokens, subject.targets)
        if self.split is not None:
            runs[SHARDED] = lambda: self.split.run(subject.tokens, subject.targets)
        return runs

    def result(self, spreads: dict[str, Spread], step_times: dict[str, Spread]) -> StaticOnly:
        subject, measured = self.subject, self.subject.result
        rewrites = [(record.name, record.nodes, {what: count for what, count in record.summary.items() if count})
                    for record in subject.step.stages]
        numba = self.numba
        kernels = None if numba is None else numba.kernels().count("# ==== kernel ")
        fused = 0 if numba is None else sum(node.op == "fused_elementwise" for node in numba.graph.nodes)
        note = ("Numba is not installed here: pip install numba to see the generated kernels and their "
                "time." if numba is None else "Kernels are compiled on first use and cached on disk.")
        return StaticOnly(subject.step.stages[-1].keep_all_bytes, measured.planned_bytes[COMPILED],
                          measured.timeline.peak_bytes, measured.planned_buffers, measured.tape_result_bytes,
                          rewrites, self.remat_rows, self.split_text, self.split_difference, kernels, fused, note,
                          self.shape_error, self.tape_ops, self.compile_ops,
                          {**spreads, COMPILED: step_times[COMPILED], REMAT: step_times[REMAT]})


def _raises(run: Callable[[], object]) -> None:
    try:
        run()
    except ShapeError:
        return
    raise AssertionError("expected a ShapeError")
