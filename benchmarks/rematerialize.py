"""Rematerialisation on a GPT training step (forward + backward), each policy side by side: planned peak, saved
activations, recomputed nodes and FLOPs (all deterministic), gradients checked bit for bit against the step
without rematerialisation, and step times measured interleaved.

    python benchmarks/rematerialize.py                  # the medium config: vocab 65, embed 256, 6 layers, 8 heads,
                                                        # T 128, batch 8 (benchmarks/train_step.py)
    python benchmarks/rematerialize.py --long --repeats 0   # 12 layers, T 512: the plans only (no timing)
    python benchmarks/rematerialize.py --shards 1       # the whole batch in one graph (default: the compile's split)

Contenders, from the same weights and batch, each compiled as graphgpt.compile(model, tokens, targets,
loss=cross_entropy, ...) with the default passes and data-parallel split:
  none               no rematerialisation (today's plan)
  mincut             the default min cut: views, elementwise ops and layer norm recomputed, never a matmul
  mincut <= 60%      memory_budget="60%": the min cut loosens what it recomputes until the plan fits
  checkpoint_blocks  each transformer block recomputed whole from its input (torch.utils.checkpoint by hand)

Planned peak is that of the graph with the backward pass (the whole step, or one shard: the budget applies per
graph, and a split step runs its shards at once); FLOPs are per step over every graph that runs. Timing: each
repetition runs every contender in a fresh random order, one untimed step then one timed one (graphgpt/timing.py);
medians and the spread (lowest to highest) are printed. On a shared or busy machine the times are not results:
measure again on an idle one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphgpt  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes.analysis import graph_flops  # noqa: E402
from graphgpt.passes.saved_activations import recomputed_nodes, saved_bytes  # noqa: E402
from graphgpt.timing import interleaved_times  # noqa: E402
from train_step import CONFIGS, build  # noqa: E402

LONG = dict(CONFIGS["medium"], layers=12, seq_len=512)
POLICIES = {"none": {}, "mincut": dict(remat_policy="mincut"), "mincut <= 60%": dict(memory_budget="60%"),
            "checkpoint_blocks": dict(remat_policy="checkpoint_blocks")}
MIB = 2**20


def step_flops(compiled) -> int:
    """FLOPs of one step: every graph that runs, a shard graph once per shard."""
    return sum(graph_flops(entry.graph) * entry.runs for entry in compiled.program.graphs)


def backward_graph(compiled):
    """The graph that runs the backward pass (the whole step, or the shard graph)."""
    return compiled.program.graphs[0]


def describe(name: str, compiled, baseline, seconds: float) -> str:
    entry, base = backward_graph(compiled), backward_graph(baseline)
    planned, base_planned = entry.plan.planned_bytes, base.plan.planned_bytes
    flops, base_flops = step_flops(compiled), step_flops(baseline)
    recomputed = recomputed_nodes(entry.graph)
    return (f"{name:<18} {planned / MIB:>8.1f} {planned / base_planned:>6.0%} "
            f"{entry.plan.timeline(entry.graph).peak_bytes / MIB:>8.1f} "
            f"{saved_bytes(entry.graph, entry.plan) / MIB:>8.1f} {len(recomputed):>6} "
            f"{flops / 1e9:>7.2f} {flops / base_flops - 1:>+7.1%} {compiled.planned_bytes / MIB:>9.1f} "
            f"{seconds:>7.2f}")


def same_gradients(compiled, baseline, tokens, targets) -> bool:
    """One step each: the same loss and every gradient the same, bit for bit."""
    loss = compiled.run(tokens, targets)
    gradients = {name: value.copy() for name, value in compiled.grads.items()}
    expected_loss = baseline.run(tokens, targets)
    return np.array_equal(loss, expected_loss) and all(
        np.array_equal(gradients[name], baseline.grads[name]) for name in baseline.grads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="12 layers, T 512 (vocab 65, embed 256, batch 8)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per contender (0: no timing)")
    parser.add_argument("--shards", type=int, default=None, help="data-parallel shards (default: the compile's)")
    parser.add_argument("--no-check", action="store_true", help="skip the gradient comparison (one step each)")
    args = parser.parse_args()
    config = LONG if args.long else CONFIGS["medium"]
    model, tokens, targets = build(config)
    compiled, seconds, refused = {}, {}, {}
    for name, options in POLICIES.items():
        started = time.perf_counter()
        try:
            compiled[name] = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=args.shards,
                                              **options)
        except graphgpt.MemoryBudgetError as error:
            refused[name] = str(error)
        seconds[name] = time.perf_counter() - started
    baseline = compiled["none"]
    print(f"GPT {config}; {baseline.split.describe()}")
    print(f"{'policy':<18} {'planned':>8} {'/ none':>6} {'live':>8} {'saved':>8} {'recomp':>6} {'GFLOP':>7} "
          f"{'+FLOPs':>7} {'all MiB':>9} {'compile':>7}")
    print(f"{'':<18} {'MiB':>8} {'':>6} {'MiB':>8} {'MiB':>8} {'nodes':>6} {'/step':>7} {'':>7} {'':>9} "
          f"{'s':>7}")
    for name, step in compiled.items():
        print(describe(name, step, baseline, seconds[name]))
    for name, refusal in refused.items():
        print(f"{name:<18} refused: {refusal}")
    print("planned / live / saved: the backward graph's planned buffers, peak of live values, saved activations; "
          "all MiB: every graph that runs")
    if not args.no_check:
        checks = {name: same_gradients(step, baseline, tokens, targets) for name, step in compiled.items()
                  if name != "none"}
        print("gradients bit-identical to none: " + ", ".join(f"{name} {'yes' if same else 'NO'}"
                                                              for name, same in checks.items()))
    if args.repeats > 0:
        steps = {name: (lambda step=step: step.run(tokens, targets)) for name, step in compiled.items()}
        times = interleaved_times(steps, args.repeats, warm_each=True)
        base = statistics.median(times["none"])
        print(f"step time, {args.repeats} interleaved repetitions (not results on a busy machine):")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<18} median {median * 1e3:8.1f} ms ({min(values) * 1e3:.1f} to "
                  f"{max(values) * 1e3:.1f})  {median / base:5.2f} x none")


if __name__ == "__main__":
    main()
