"""Building a Program: the forward graph through the passes (a forward program), or a training step made from the
forward-and-loss graph (backward, the optimizer's update, rematerialisation) and split into data-parallel shards
when the split is proved exact. passes/program.py holds what is built; this file how.

    program = build_forward_program(graph, passes=None, fast_math=False, backend=None)
    program = build_training_program(forward, wrt, rule, trace_shard=...)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional, Sequence, Union

from graphgpt.ir import Graph, GraphBuilder, verify
from graphgpt.ir.dims import active_shape_env, is_symbolic, substitute
from graphgpt.ir.shape_env import Guard, shape_env

from .analysis import graph_flops
from .autodiff import append_backward
from .backends import backend_named
from .data_parallel import prove_split, scale_shard_graph, shard_extent, shard_mismatch
from .gradient_buckets import GradientBuckets, join_gradients
from .manager import FastMathOption, StageRecord, default_pipeline, fast_math_flags, run_pipeline, split_before_autodiff
from .optimizer_update import UpdateRule, append_update
from .program import Program, ProgramGraph, Split, rematerialized, shard_name
from .rematerialize import MemoryBudgetError, RematOptions
from .blas_threads import available_cores

# Below this many floating-point operations per step, splitting loses with the NumPy backend: small arrays make
# short NumPy calls that keep the GIL (NumPy releases it only for larger loops), so the shards' threads take turns
# instead of running together. Measured, split / whole step time: 1.56 at 0.18 GFLOP (the tiny GPT), 1.44 at 1.4
# GFLOP, 0.78 at 5.8, 0.75 at 10.7 and 0.70 at 31.9 (the medium GPT). A backend whose kernels release the GIL
# gains from smaller steps on (its `min_split_flops`: NumbaBackend's).
MIN_SPLIT_FLOPS = 4 * 10**9

Passes = Optional[Sequence[Union[str, Callable]]]


def _optimise(graph: Graph, passes: Passes, verify_each: bool, fast_math: frozenset[str],
              remat: RematOptions = RematOptions(), name: str = "",
              before_autodiff: Optional[dict[str, int]] = None) -> list[StageRecord]:
    """The pipeline's records, then rematerialisation's (a training graph of concrete sizes: a symbolic one is
    rematerialised per size, by Program.specialize). `before_autodiff`: what the passes run on the forward graph
    changed, reported with the input."""
    records = run_pipeline(verify(graph), passes, verify_each, fast_math)[1]
    if before_autodiff:
        records[0] = dataclasses.replace(records[0], summary={f"{what} before autodiff": count
                                                               for what, count in before_autodiff.items()})
    return rematerialized(records, remat, verify_each, name)


def _before_autodiff(forward: Graph, passes: Sequence, verify_each: bool,
                     fast_math: frozenset[str]) -> tuple[Graph, dict[str, int]]:
    """`forward` after the passes that must see it before the backward is generated (BEFORE_AUTODIFF in
    passes/manager.py), and what they changed."""
    if not passes:
        return forward, {}
    graph, records = run_pipeline(verify(forward), passes, verify_each, fast_math)
    changed: dict[str, int] = {}
    for record in records[1:]:
        for what, count in record.summary.items():
            changed[what] = changed.get(what, 0) + count
    return graph, changed


def build_forward_program(graph: Graph, passes: Passes = None, verify_each=False, check_numerics=False,
                          fast_math: FastMathOption = False, backend: Optional[str] = None,
                          name: str = "forward") -> Program:
    """A program running `graph` (shapes inferred) after the passes (value-changing rewrites as `fast_math`
    allows: see passes/manager.py FAST_MATH_FLAGS), its nodes computed by `backend` (passes/backends.py); `name`
    heads its report and diagrams ("decode" for a generation's decode step)."""
    flags = fast_math_flags(fast_math)
    kernels = backend_named(backend)
    entry = ProgramGraph(name, _optimise(graph, _with_backend_passes(passes, flags, kernels), verify_each, flags))
    verify(entry.graph)
    return Program([entry], entry, Split(1, "a forward graph"), graph, check_numerics=check_numerics,
                   fast_math=flags, backend=kernels)


def _with_backend_passes(passes: Passes, flags: frozenset[str], backend) -> Passes:
    """The passes asked for; by default, the default pipeline and the passes the backend adds to it."""
    if passes is not None or backend is None:
        return passes
    return (*default_pipeline(flags), *backend.extra_passes())


def training_step(forward: Graph, wrt: Sequence[str], rule: Optional[UpdateRule]) -> Graph:
    """The forward-and-loss graph with its backward pass and, given an update rule, the optimizer's update."""
    backward = append_backward(forward, wrt)
    if rule is None:
        return backward.graph
    return append_update(backward.graph, backward.reached_gradients(), rule)


def build_training_program(forward: Graph, wrt: Sequence[str], rule: Optional[UpdateRule] = None, *,
                           passes: Passes = None, verify_each=False, check_numerics=False,
                           shards: Optional[int] = None, trace_shard: Optional[Callable[[int], Graph]] = None,
                           fast_math: FastMathOption = False, remat: RematOptions = RematOptions(),
                           backend: Optional[str] = None) -> Program:
    """A training step: loss, gradients of `wrt` and the update of `rule` (optional) from the forward-and-loss
    graph `forward`, split into data-parallel shards when proved exact (see passes/data_parallel.py).

    `shards`: None splits into as many shards as there are cores when the proof holds and the step is big enough
    to gain (MIN_SPLIT_FLOPS, or the backend's min_split_flops); 1 never splits; k > 1 asks for k shards and raises ValueError with the reason if
    the proof fails. `trace_shard(k)` traces the same model and loss at 1/k of the batch (shapes inferred).
    `fast_math`: the value-changing rewrites the passes may make (passes/manager.py FAST_MATH_FLAGS).
    `remat`: rematerialisation (passes/rematerialize.py), run after the passes on each graph with a backward pass
    (the whole step, or the shard graph: its budget is per shard, and the shards run at once).
    `backend`: what computes the nodes (passes/backends.py), in every graph."""
    flags = fast_math_flags(fast_math)
    kernels = backend_named(backend)
    passes = _with_backend_passes(passes, flags, kernels)
    early, passes = split_before_autodiff(default_pipeline(flags) if passes is None else passes)
    wanted = available_cores() if shards is None else shards
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise ValueError(f"shards must be a positive integer or None, got {shards!r}")
    fused_forward, fused = _before_autodiff(forward, early, verify_each, flags)
    step = training_step(fused_forward, wrt, rule)

    env = active_shape_env()  # a symbolic trace's: the whole step may be optimised later, on first use

    def optimise_whole(runs: bool = True) -> ProgramGraph:
        with shape_env(env) if env is not None else contextlib.nullcontext():
            try:
                stages = _optimise(step, passes, verify_each, flags, remat, "training step", fused)
            except MemoryBudgetError:
                if runs:
                    raise
                # Only for study beside a split step (whose shards met the budget): the policy, without it.
                stages = _optimise(step, passes, verify_each, flags, RematOptions.of(remat.policy), "training step",
                                   fused)
            whole = ProgramGraph("training step", stages)
            verify(whole.graph)
        return whole

    def unsplit(reason: str) -> Program:
        if shards is not None and shards > 1:
            raise ValueError(f"cannot split this training step into {wanted} data-parallel shards: {reason}")
        whole = optimise_whole()
        return Program([whole], whole, Split(1, reason), step, wrt, check_numerics, flags, remat, kernels)

    if wanted == 1:
        return unsplit("one core" if shards is None else "shards=1")
    # As traced: the passes change it little, and need not run on a step that splits. At the example's sizes
    # for a symbolic trace (dynamic='seq').
    flops = substitute(graph_flops(step), env.hints) if env is not None else graph_flops(step)
    least = MIN_SPLIT_FLOPS if kernels is None else kernels.min_split_flops
    if shards is None and flops < least:
        return unsplit(f"{flops / 1e9:.2f} GFLOP per step is too little to gain (below {least / 1e9:g} with the "
                       f"{kernels.name if kernels is not None else 'numpy'} backend)")
    if trace_shard is None:
        return unsplit("no way to trace the model at the shard's batch was given")
    proof, problem = prove_split(forward, wanted)
    if problem is None:
        guards_before = len(env.guards) if env is not None else 0
        shard_forward = trace_shard(wanted)
        problem = shard_mismatch(forward, shard_forward, proof)
        if problem is None and env is not None and any(  # the shard's B is not the whole batch's
                guard_mentions(guard, shard_batch_symbols(forward)) for guard in env.guards[guards_before:]):
            problem = "tracing at the shard's batch added a guard on the batch size"
    if problem is not None:
        return unsplit(problem)

    batch = forward.inputs[0].type.shape[0]
    scaled = scale_shard_graph(shard_forward, forward, proof)
    scaled, shard_fused = _before_autodiff(scaled, early, verify_each, flags)
    shard_backward = append_backward(scaled, wrt)
    shard_graph, buckets = join_gradients(shard_backward.graph, wrt)
    name = shard_name(batch, wanted)
    shard = ProgramGraph(name, _optimise(shard_graph, passes, verify_each, flags, remat, name, shard_fused),
                         runs=wanted)
    combine = ProgramGraph("combine", _optimise(
        combine_shards(verify(shard.graph), wanted, buckets, rule, shard_backward.unreached), passes, verify_each,
        flags))
    verify(combine.graph)
    whole_batch = wanted * batch if is_symbolic(batch) else batch  # a symbolic B is the shard's own batch
    split = Split(wanted, f"batch {whole_batch} as {wanted} x {shard_extent(batch, wanted)}"
                          f"{' (a batch that does not divide runs whole)' if is_symbolic(batch) else ''}, "
                          f"{proof.describe()}")
    return Program([shard, combine], lambda: optimise_whole(runs=False), split, step, wrt, check_numerics, flags,
                   remat, kernels)


def guard_mentions(guard: Guard, symbols: frozenset[str]) -> bool:
    return any(is_symbolic(side) and side.symbols & symbols for side in (guard.left, guard.right))


def shard_batch_symbols(forward: Graph) -> frozenset[str]:
    """The symbols of the batch axis (a symbolic trace's B), which mean the shard's batch in its graph."""
    extent = forward.inputs[0].type.shape[0] if forward.inputs and forward.inputs[0].type.rank else 0
    return extent.symbols if is_symbolic(extent) else frozenset()


def combine_shards(shard: Graph, shards: int, buckets: GradientBuckets, rule: Optional[UpdateRule],
                   unreached: frozenset[str] = frozenset()) -> Graph:
    """The combine graph. Inputs: the shards' outputs summed (the loss, then each bucket of gradients: the shard
    graph is scaled so that these sums are the whole batch's). Outputs: the loss and the gradient of each name of
    `buckets` (views cut from the buckets); with an update rule, the optimizer's update from the summed gradients
    of the parameters the loss reaches (not those in `unreached`). Its parameters are the shard graph's (and the
    optimizer's state)."""
    builder = GraphBuilder(header=f"combine {shards} data-parallel shards")
    names = ["loss", *(buckets.bucket_name(bucket) for bucket in buckets.buckets)]
    totals = [builder.add_input(f"sum_of_shards.{name}", value.type)
              for name, value in zip(names, shard.outputs)]
    for value in shard.params:
        builder.add_param(value.name, value.type)
    gradients = buckets.cut(builder, totals[1:])
    graph = builder.finish([totals[0], *gradients])
    if rule is None:
        return graph
    reached = {name: gradient for name, gradient in zip(buckets.names, gradients) if name not in unreached}
    return append_update(graph, reached, rule)
