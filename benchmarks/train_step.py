"""One GPT training step (forward + backward), measured side by side in one run.

    python benchmarks/train_step.py                 # the medium config: vocab 65, embed 256, 6 layers, 8 heads,
                                                    # T 128, batch 8, float32
    python benchmarks/train_step.py --tiny          # embed 64, 2 layers, T 32, batch 8 (per-op overhead)

Contenders, all from the same float32 weights and batch:
  compiled         graphgpt.compile(..., loss=cross_entropy) with the default passes, run as its default
                   data-parallel split (the medium step: two half-batch shards, one per core)
  compiled-whole   the same, shards=1: the whole batch in one schedule, BLAS on every core
  compiled-nopass  no optimisation passes (and the default split)
  eager            graphgpt eager: model(Tensor(x)), loss.backward() on the tape
  numpy            a hand-written vectorised NumPy forward+backward (benchmarks/baseline_numpy.py)
  numpy-split      the same by hand on two half batches, one thread each with one BLAS thread, gradients
                   averaged: what the compiled step's data-parallel split does, done by hand (for reference:
                   ratios stay against `numpy`, the baseline as written)
  torch            PyTorch eager on CPU (benchmarks/baseline_torch.py), when torch is installed

Timing: every repetition runs each contender in a fresh random order, one untimed step then one timed step back to
back (noise on this shared 2-core machine hits all of them alike, no contender always follows the same one, and
each is measured in its steady state); medians are reported with ratios. GFLOP/s use the graph's FLOP count and are shown next to
the measured NumPy float32 matmul peak. Peak memory: each contender runs twice more in a fresh subprocess,
reporting the rise of its peak resident set over the resident set before (weights loaded, graphs compiled):
for the compiled steps that includes first touching their planned buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphgpt  # noqa: E402
from graphgpt.timing import interleaved_times  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes.analysis import graph_flops  # noqa: E402
from baseline_numpy import forward_backward  # noqa: E402

CONFIGS = {
    "medium": dict(vocab=65, embed=256, layers=6, heads=8, seq_len=128, batch=8),
    "tiny": dict(vocab=65, embed=64, layers=2, heads=4, seq_len=32, batch=8),
}


def build(config: dict):
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(config["vocab"], config["embed"], config["layers"], config["heads"],
                            max_seq_len=config["seq_len"])
    rng = np.random.default_rng(0)
    shape = (config["batch"], config["seq_len"])
    return model, rng.integers(0, config["vocab"], shape), rng.integers(0, config["vocab"], shape)


def contenders(config: dict, model, tokens, targets) -> dict:
    """name -> a function running one forward+backward step (weights are not updated, so steps are alike)."""
    compiled = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy)
    whole = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1)
    unoptimised = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=[])

    def eager():
        model.zero_grad()
        F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets)).backward()

    steps = {"compiled": lambda: compiled.run(tokens, targets),
             "compiled-whole": lambda: whole.run(tokens, targets),
             "compiled-nopass": lambda: unoptimised.run(tokens, targets),
             "eager": eager}
    params = model.state_dict()
    steps["numpy"] = lambda: forward_backward(params, tokens, targets, config["heads"])
    steps["numpy-split"] = numpy_split_step(params, tokens, targets, config["heads"])
    try:
        import torch  # noqa: F401
    except ImportError:
        print("(torch not installed: `pip install torch==2.13.0` to compare with PyTorch)")
    else:
        from baseline_torch import make_torch_step
        torch_step = make_torch_step(params, config["heads"])
        steps["torch"] = lambda: torch_step(tokens, targets)
    return steps, compiled


def numpy_split_step(params: dict, tokens, targets, heads: int):
    """The hand-written step over two half batches on two threads (BLAS limited to one thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import ThreadpoolController

    pool, blas = ThreadPoolExecutor(1), ThreadpoolController()
    half = tokens.shape[0] // 2

    def step():
        with blas.limit(limits=1, user_api="blas"):
            other = pool.submit(forward_backward, params, tokens[half:], targets[half:], heads)
            loss, grads = forward_backward(params, tokens[:half], targets[:half], heads)
            other_loss, other_grads = other.result()
        return (loss + other_loss) / 2, {name: (grads[name] + other_grads[name]) / 2 for name in grads}
    return step


def check_agreement(steps: dict, compiled, tokens, targets) -> str:
    """The losses every contender computes for the batch, so a reader sees they do the same work."""
    reference = float(compiled.run(tokens, targets))
    losses = {"numpy": lambda: steps["numpy"]()[0], "numpy-split": lambda: steps["numpy-split"]()[0]}
    if "torch" in steps:
        losses["torch"] = lambda: steps["torch"]().item()
    return ", ".join([f"compiled {reference:.6f}"] + [f"{name} {float(run()):.6f}" for name, run in losses.items()])


def matmul_peak_gflops(size: int = 1024, repeats: int = 15) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.matmul(a, a, out=out)
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / min(times) / 1e9


def measure_memory(config_name: str, contender: str) -> float:
    """Peak RSS rise (MiB) of one step of `contender`, in a fresh process."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r});"
            f"import train_step as t; print(t.memory_child({config_name!r}, {contender!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(config_name: str, contender: str) -> float:
    """Peak resident set during two steps, above the resident set before them (MiB). Linux only: writing 5 to
    /proc/self/clear_refs resets the high-water mark after setup (compiling, building the model)."""
    config = CONFIGS[config_name]
    model, tokens, targets = build(config)
    steps, _ = contenders(config, model, tokens, targets)
    run = steps[contender]
    del steps
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    run()
    run()
    return (_status_kib("VmHWM") - baseline) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny config (embed 64, 2 layers, T 32)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    config_name = "tiny" if args.tiny else "medium"
    config = CONFIGS[config_name]
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    model, tokens, targets = build(config)
    steps, compiled = contenders(config, model, tokens, targets)
    for run in steps.values():  # warm-up: first-run allocations, caches
        run()

    # A fresh random order each repetition: a fixed cycle would always run the same contender right after
    # PyTorch, whose OpenMP workers keep spinning for a while after a step and take the cores from whatever runs
    # next. Each contender runs one untimed step first (it absorbs the previous contender's spinning threads and
    # leaves its own warm), then the timed one: back to back, as in a training loop.
    times = interleaved_times(steps, args.repeats, warm_each=True)
    medians = {name: statistics.median(values) for name, values in times.items()}

    flops = graph_flops(compiled.graph)
    peak = matmul_peak_gflops()
    print(f"GPT {config_name}: {json.dumps(config)}; {args.repeats} interleaved repetitions, medians")
    print(f"one step = {flops / 1e9:.2f} GFLOP (graph count); NumPy float32 matmul peak here {peak:.0f} GFLOP/s")
    print(f"loss of the batch: {check_agreement(steps, compiled, tokens, targets)}")
    memory = {} if args.no_memory else {name: measure_memory(config_name, name) for name in steps}
    header = f"{'contender':<16} {'median ms':>10} {'GFLOP/s':>8} {'peak RSS rise MiB':>18}"
    reference_names = [name for name in ("torch", "numpy", "eager") if name in medians]
    header += "".join(f" {'/ ' + name:>10}" for name in reference_names)
    print(header)
    for name in steps:
        row = f"{name:<16} {medians[name] * 1e3:>10.1f} {flops / medians[name] / 1e9:>8.1f} "
        row += f"{memory.get(name, float('nan')):>18.1f}"
        row += "".join(f" {medians[name] / medians[ref]:>10.2f}" for ref in reference_names)
        print(row)
    # Planned: every schedule that runs (each shard's and the combine graph's); kept: the whole step as one graph.
    planned, keep_all = compiled.planned_bytes, compiled.program.whole.stages[-1].keep_all_bytes
    running = ", ".join(f"{name} {len(graph.nodes)} nodes" for name, graph in compiled.graphs.items())
    print(f"compiled: runs {running}; planned buffers {planned / 2**20:.1f} MiB vs "
          f"{keep_all / 2**20:.1f} MiB to keep every intermediate of the whole step ({planned / keep_all:.0%}); "
          f"{compiled.split.describe()}")


if __name__ == "__main__":
    main()
