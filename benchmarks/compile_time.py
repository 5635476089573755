"""How long graphgpt.compile takes, and how that grows with the number of layers.

    python benchmarks/compile_time.py [--repeats 7]

Compiles GPTs of width 128 (4 heads, T 64, batch 8) with 1..24 layers, interleaving the sizes in every repetition
so machine noise hits all of them alike, and prints medians, the cost per layer, and the 12-layer figure against
the 1-second target. Also splits the 12-layer compile into its phases (trace, shape inference, verify, the
passes and the schedule), and times compiling the medium GPT's training step with AdamW (65, 256 wide, 6 layers,
8 heads, T 128, batch 8: split into data-parallel shards on a machine with several cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphgpt
from graphgpt.trace_entry import trace
from graphgpt.ir import verify
from graphgpt.nn import functional as F
from graphgpt.passes import infer_shapes
from graphgpt.passes.program_build import build_forward_program

LAYER_COUNTS = (1, 2, 4, 8, 12, 24)
WIDTH, HEADS, VOCAB, SEQ_LEN, BATCH = 128, 4, 65, 64, 8


def build(num_layers: int):
    graphgpt.manual_seed(0)
    return graphgpt.nn.GPT(VOCAB, WIDTH, num_layers, HEADS, max_seq_len=SEQ_LEN)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH, SEQ_LEN))
    models = {layers: build(layers) for layers in LAYER_COUNTS}
    graphgpt.compile(models[1], tokens)  # warm imports and caches

    samples = {layers: [] for layers in LAYER_COUNTS}
    phases = {name: [] for name in ("trace", "infer_shapes", "verify", "passes and schedule")}
    graphgpt.manual_seed(0)
    medium = graphgpt.nn.GPT(VOCAB, 256, 6, 8, max_seq_len=128)
    medium_tokens = np.random.default_rng(0).integers(0, VOCAB, size=(8, 128))

    def compile_medium_step():
        return graphgpt.compile(medium, medium_tokens, medium_tokens, loss=F.cross_entropy,
                                optimizer=graphgpt.optim.AdamW(lr=1e-3))

    training = []
    for _ in range(args.repeats):
        for layers in LAYER_COUNTS:
            samples[layers].append(timed(lambda: graphgpt.compile(models[layers], tokens)))
        held = {}
        phases["trace"].append(timed(lambda: held.update(traced=trace(models[12], tokens))))
        traced = held["traced"]
        phases["infer_shapes"].append(timed(lambda: held.update(typed=infer_shapes(traced.graph))))
        phases["verify"].append(timed(lambda: verify(held["typed"])))
        phases["passes and schedule"].append(timed(lambda: build_forward_program(held["typed"])))
        training.append(timed(compile_medium_step))

    nodes = {layers: len(graphgpt.compile(models[layers], tokens).graph.nodes) for layers in LAYER_COUNTS}
    medians = {layers: statistics.median(times) for layers, times in samples.items()}
    print(f"compile time, GPT width {WIDTH}, {HEADS} heads, tokens ({BATCH}, {SEQ_LEN}); "
          f"median of {args.repeats} interleaved repetitions")
    print(f"{'layers':>6} {'nodes':>6} {'median ms':>10} {'ms/layer':>9} {'us/node':>8}")
    for layers in LAYER_COUNTS:
        ms = medians[layers] * 1e3
        print(f"{layers:>6} {nodes[layers]:>6} {ms:>10.1f} {ms / layers:>9.2f} {ms * 1e3 / nodes[layers]:>8.1f}")
    slope, intercept = np.polyfit(LAYER_COUNTS, [medians[n] * 1e3 for n in LAYER_COUNTS], 1)
    fitted = np.polyval([slope, intercept], LAYER_COUNTS)
    worst = max(abs(f - medians[n] * 1e3) / (medians[n] * 1e3) for f, n in zip(fitted, LAYER_COUNTS))
    print(f"linear fit: {intercept:.1f} ms + {slope:.2f} ms/layer (worst deviation from the line {worst:.0%}); "
          f"24 layers / 12 layers = {medians[24] / medians[12]:.2f}x")
    print(f"12 layers: {medians[12] * 1e3:.0f} ms against the 1000 ms target "
          f"({'met' if medians[12] < 1.0 else 'NOT met'})")
    print("12-layer phases (median ms): " + ", ".join(
        f"{name} {statistics.median(times) * 1e3:.1f}" for name, times in phases.items()))
    print(f"medium training step with AdamW ({compile_medium_step().split.describe()}): "
          f"median {statistics.median(training) * 1e3:.0f} ms, range {min(training) * 1e3:.0f}-"
          f"{max(training) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
