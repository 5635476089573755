"""The pass manager: runs a pipeline of passes, verifies after each one when asked (always in tests), and keeps a
record of every stage (node count, FLOPs, memory, what the pass changed, which values it created and removed)
so reports and before/after diagrams can show what each pass did.

    graph, records = run_pipeline(graph)                    # the default pipeline: every rewrite bit-exact
    graph, records = run_pipeline(graph, fast_math=True)    # and the rewrites that may change results
    graph, records = run_pipeline(graph, passes=[])         # none, for study
    print(format_report(records))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Callable, Iterable, Optional, Sequence, Union

from graphgpt.ir import Graph, verify
from graphgpt.ir.dims import SymbolicShapeError

from .analysis import graph_flops, keep_all_bytes
from .memory_plan import MemoryPlan, plan_memory
from .common_subexpressions import eliminate_common_subexpressions
from .attention_fusion import fuse_attention
from .matmul_layout import write_matmuls_permuted
from .constant_folding import fold_constants
from .dead_nodes import eliminate_dead_nodes
from .elementwise_fusion import fuse_elementwise
from .horizontal_fusion import fuse_horizontal_matmuls
from .result import PassResult
from .simplify import ADDS_NODES, simplify
from .specialize import is_symbolic_graph, specialize_graph

PASSES: dict[str, Callable[[Graph], PassResult]] = {
    "simplify": simplify,
    "fold_constants": fold_constants,
    "eliminate_common_subexpressions": eliminate_common_subexpressions,
    "eliminate_dead_nodes": eliminate_dead_nodes,
    "fuse_elementwise": fuse_elementwise,
    "fuse_horizontal_matmuls": fuse_horizontal_matmuls,
    "fuse_attention": fuse_attention,
    "write_matmuls_permuted": write_matmuls_permuted,
}
# Fast-math flags: each allows rewrites that may change a result's bits, naming the IEEE guarantee it gives up.
# Without them (the default) every rewrite of every pass gives bit-identical results for every input: -0.0,
# infinities, NaN, overflow and subnormals included. Named after LLVM's per-instruction fast-math flags (nsz, ninf,
# reassoc, afn; `fast` for all) and GCC's -ffast-math family (-fno-signed-zeros, -ffinite-math-only,
# -fassociative-math, -funsafe-math-optimizations), spelled out; like them, each is a separate permission, so
# reassociating need not also give up signed zeros, and True means all of them (-ffast-math).
FAST_MATH_FLAGS = {
    "no_signed_zeros": "treat -0.0 as +0.0: x + 0.0 -> x, x - (-0.0) -> x",
    "no_infinities": "assume no value is infinite: with no_signed_zeros, x ** 0.5 -> sqrt(x)",
    "reassociate": "regroup sums and products, rounding differently: (x * c1) * c2 -> x * (c1 * c2), matmuls "
                   "sharing an operand as one GEMM, a batched matmul of a transposed operand as one (BLAS adds "
                   "in another order), attention fused into one op (its gradient summed block by block)",
    "approximate_functions": "pow by multiplies, rounding after each: x ** 3 -> x * x * x, x ** 4",
}
FastMathOption = Union[bool, None, str, Iterable[str]]


def fast_math_flags(option: FastMathOption) -> frozenset[str]:
    """The flags a `fast_math=` option allows: False or None none, True all, else one name or an iterable of
    names from FAST_MATH_FLAGS.

    >>> sorted(fast_math_flags({"reassociate"})), len(fast_math_flags(True))
    (['reassociate'], 4)
    """
    if option is None or option is False:
        return frozenset()
    if option is True:
        return frozenset(FAST_MATH_FLAGS)
    flags = frozenset([option] if isinstance(option, str) else option)
    unknown = sorted(flag for flag in flags if flag not in FAST_MATH_FLAGS)
    if unknown:
        raise ValueError(f"unknown fast-math flag(s) {unknown}; known: {', '.join(FAST_MATH_FLAGS)} "
                         f"(or True for all)")
    return flags


DEFAULT_PIPELINE = ("simplify", "fold_constants", "eliminate_common_subexpressions", "write_matmuls_permuted",
                    "eliminate_dead_nodes")
# write_matmuls_permuted: attention's head merges (forward and backward) written by the GEMMs, not copied after
# them (passes/matmul_layout.py).
# Measured on the medium GPT training step (vocab 65, embed 256, 6 layers, 8 heads, T 128, batch 8), interleaved:
# - fuse_elementwise: exact, but ~3% slower end to end (310 vs 300, 371 vs 359, 375 vs 366, 392 vs 361 ms),
#   though its fused nodes beat their parts in isolation. Unfused, each ufunc already writes in place into a
#   buffer hot in cache from the op before it, so memory-bound NumPy chains leave fusion little to save: it is
#   left out of the default. Ask for it with passes=[..., "fuse_elementwise"].
# - fuse_horizontal_matmuls: 360 vs 368 and 398 vs 402 ms, a small gain; but not exact (below). Measured again
#   with fast_math=True against the exact default (the joined q/k/v are the only fast-math rewrite the GPT meets),
#   medians of 15: 310 vs 287 and 269 vs 268 ms split in two shards, 405 vs 399 and 348 vs 346 ms whole: no gain
#   left to see in the noise.
OPTIONAL_PASSES = ("fuse_elementwise",)
# Passes any rewrite of which may change values, and the fast-math flag that allows them; with it, they join the
# default pipeline. fuse_horizontal_matmuls: one (M, k) @ (k, n1 + n2 + n3) GEMM sums each product in the order
# BLAS picks for that size, not always in the order of the three (M, k) @ (k, n) GEMMs (95 of 400 random shapes
# differed in the last bit; the GPT's shapes did not with one BLAS kernel, and do with OpenBLAS's Haswell one).
VALUE_CHANGING_PASSES = {"fuse_horizontal_matmuls": "reassociate", "fuse_attention": "reassociate"}
# Passes that rewrite a forward graph into ops with gradient rules of their own, so a training step runs them on
# the forward graph before the backward is generated (passes/program.py), and a forward program first, before
# simplify reshapes the pattern they look for (it merges the transpose of k with the heads' split).
BEFORE_AUTODIFF = ("fuse_attention",)
# Passes whose rewrites read the fast-math flags, given them as `fast_math=` (named or passed as functions).
FLAG_READING_PASSES = (simplify,)


def default_pipeline(fast_math: FastMathOption = False) -> tuple[str, ...]:
    """DEFAULT_PIPELINE, and the value-changing passes the fast-math flags allow (those of BEFORE_AUTODIFF
    first)."""
    flags = fast_math_flags(fast_math)
    allowed = [name for name, flag in VALUE_CHANGING_PASSES.items() if flag in flags]
    return (tuple(name for name in allowed if name in BEFORE_AUTODIFF) + DEFAULT_PIPELINE
            + tuple(name for name in allowed if name not in BEFORE_AUTODIFF))


def split_before_autodiff(passes: Sequence[Union[str, Callable]]) -> tuple[list, list]:
    """(the passes of BEFORE_AUTODIFF, the others), each in the order given."""
    def early(entry) -> bool:
        return (entry if isinstance(entry, str) else entry.__name__) in BEFORE_AUTODIFF

    return [entry for entry in passes if early(entry)], [entry for entry in passes if not early(entry)]


# Rewrites enable each other (a simplification exposes a constant to fold, a fold a duplicate to merge): run
# each to a fixed point, up to this many sweeps.
MAX_SWEEPS = 8


@dataclass
class StageRecord:
    """The graph after one pass (or the input, for the first record) and what the pass changed. Its measurements
    (FLOPs, memory) are computed when first asked for: a compile records many stages and plans memory for the
    one that runs, not for every one."""

    name: str
    graph: Graph
    summary: dict[str, int] = field(default_factory=dict)
    created: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def nodes(self) -> int:
        return len(self.graph.nodes)

    @cached_property
    def flops(self) -> int:
        return graph_flops(self.graph)

    @cached_property
    def keep_all_bytes(self) -> int:
        """Every intermediate kept alive (a tape's view of memory)."""
        return keep_all_bytes(self.graph)

    @cached_property
    def plan(self) -> MemoryPlan:
        """The memory plan of this stage's graph (for the last stage: the one its schedule runs over)."""
        return plan_memory(self.graph)

    @cached_property
    def peak_bytes(self) -> int:
        """The most bytes of planned buffers holding live values at once (the liveness analysis's bound)."""
        return self.plan.timeline(self.graph).peak_bytes

    @property
    def planned_bytes(self) -> int:
        """What the schedule allocates: the memory plan's buffers and kernel scratch."""
        return self.plan.planned_bytes

    def at(self, sizes: dict[str, int]) -> "StageRecord":
        """This record with its graph specialised to `sizes` (passes/specialize.py), to measure a symbolic one."""
        if not sizes or not is_symbolic_graph(self.graph):
            return self
        return StageRecord(self.name, specialize_graph(self.graph, sizes), self.summary, self.created,
                           self.removed, self.seconds)


def _node_ids(graph: Graph) -> set[int]:
    return {node.output.id for node in graph.nodes}


def run_to_fixed_point(function: Callable[[Graph], PassResult], graph: Graph) -> PassResult:
    """Repeat a pass while it still changes the node list; summaries add up."""
    total: dict[str, int] = {}
    for _ in range(MAX_SWEEPS):
        result = function(graph)
        for what, count in result.summary.items():
            total[what] = total.get(what, 0) + count
        changed = _node_ids(result.graph) != _node_ids(graph) or any(result.summary.values())
        graph = result.graph
        if not changed:
            break
    return PassResult(graph, total)


def run_pipeline(graph: Graph, passes: Optional[Sequence[Union[str, Callable]]] = None,
                 verify_each: bool = False, fast_math: FastMathOption = False) -> tuple[Graph, list[StageRecord]]:
    """Run `passes` (names from PASSES or functions; default: default_pipeline(fast_math)) and record every
    stage. Rewrites that may change values are made only as the fast-math flags allow (see FAST_MATH_FLAGS); a
    value-changing pass named without its flag is refused."""
    flags = fast_math_flags(fast_math)
    passes = default_pipeline(flags) if passes is None else passes
    records = [StageRecord("input", graph)]
    for entry in passes:
        if isinstance(entry, str):
            if entry not in PASSES:
                raise ValueError(f"unknown pass {entry!r}; known passes: {', '.join(PASSES)}")
            name, function = entry, PASSES[entry]
        else:
            name, function = entry.__name__, entry
        needed = VALUE_CHANGING_PASSES.get(name)
        if needed is not None and needed not in flags:
            raise ValueError(f"{name} may change results in the last bits ({FAST_MATH_FLAGS[needed]}); "
                             f"allow it with fast_math={{{needed!r}}}")
        if function in FLAG_READING_PASSES:
            function = partial(function, fast_math=flags)
        started = time.perf_counter()
        try:
            result = run_to_fixed_point(function, graph)
        except SymbolicShapeError as error:
            raise SymbolicShapeError(f"pass {name} cannot handle this graph's symbolic sizes ({error}); leave it "
                                     f"out, or compile without dynamic=") from None
        seconds = time.perf_counter() - started
        if verify_each:
            verify(result.graph)
        records.append(record_stage(name, graph, result, seconds))
        graph = result.graph
    return graph, records


def record_stage(name: str, before: Graph, result: PassResult, seconds: float) -> StageRecord:
    """The record of pass `name` having turned `before` into `result` in `seconds`."""
    before_ids, after_ids = _node_ids(before), _node_ids(result.graph)
    return StageRecord(name, result.graph, result.summary, created=after_ids - before_ids,
                       removed=before_ids - after_ids, seconds=seconds)


def format_report(records: Sequence[StageRecord], sizes: Optional[dict[str, int]] = None) -> str:
    """A per-pass table: node count, FLOPs, memory (every value kept alive; the liveness lower bound; the planned
    buffers the schedule allocates), the pass's time, and what it changed. Symbolic graphs are measured at
    `sizes`."""
    lines = [f"{'stage':<34} {'nodes':>6} {'MFLOP':>9} {'keep-all MiB':>12} {'live MiB':>9} {'planned MiB':>11} "
             f"{'ms':>7}  changes"]
    for record in (record.at(sizes) for record in records):
        changes = ", ".join(f"{what} {count}" for what, count in record.summary.items() if count) or "-"
        lines.append(f"{record.name:<34} {record.nodes:>6} {record.flops / 1e6:>9.2f} "
                     f"{record.keep_all_bytes / 2**20:>12.2f} {record.peak_bytes / 2**20:>9.2f} "
                     f"{record.planned_bytes / 2**20:>11.2f} {record.seconds * 1e3:>7.1f}  {changes}")
    if len(records) > 1:
        lines.append(explain_node_count(records))
    return "\n".join(lines)


def explain_node_count(records: Sequence[StageRecord]) -> str:
    """How the node count moved from the traced graph to the last stage, pass by pass, and why a pass that adds
    nodes does: 'nodes: 255 as traced -> 256 after 4 passes: simplify +35, ...'."""
    moves, reasons = [], []
    for before, after in zip(records, records[1:]):
        change = after.nodes - before.nodes
        if change:
            moves.append(f"{after.name} {change:+d}")
        if change > 0:
            reasons += [f"{what} ({count}): {ADDS_NODES[what]}" for what, count in after.summary.items()
                        if count and what in ADDS_NODES]
    line = (f"nodes: {records[0].nodes} as traced -> {records[-1].nodes} after {len(records) - 1} passes"
            + (f": {', '.join(moves)}" if moves else ", unchanged"))
    return line + "".join(f"\n  added on purpose by {reason}" for reason in reasons)
