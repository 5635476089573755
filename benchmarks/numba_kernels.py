"""The Numba backend against the NumPy one, side by side in one run: each generated kernel alone, a decode step,
the tiny and medium training steps, and what it costs (import, compile cold and with a warm disk cache).

    python benchmarks/numba_kernels.py                 # everything (a few minutes)
    python benchmarks/numba_kernels.py --quick         # fewer repeats, no medium training step
    python benchmarks/numba_kernels.py --kernels-only  # the kernels against NumPy and numexpr, nothing else

Contenders:
  kernels       each op's NumPy kernel (its compute_into: in-place ufunc chains with out=, in cache-sized row
                blocks) against the same computed by numexpr (benchmarks/numexpr_kernels.py; when installed:
                pip install numexpr) and against its generated kernel, each on one thread and on every core
                (numexpr's threads, the kernel's rows in prange) where the array has more than one row; a
                decode-sized row (1 x 128) and a training-sized array (8*128 x 256)
  decode        graphgpt.compile_generation(GPT(65, 128, 2, 4, max_seq_len=256), backend=...).generate(prompt,
                200, top_k=1): tokens/s, greedy (the tokens are checked equal)
  training      benchmarks/train_step.py's tiny and medium steps (forward + backward, cross-entropy) compiled with
                each backend: as compiled by default (the medium step in two data-parallel shards), whole
                (shards=1), numba without the extra fusion of elementwise chains, numba whole with its large
                kernels' rows on every core (NumbaBackend(threads=True)), and with AdamW's update (the
                step `graphgpt train` runs; the losses differ from the others' after the first update)
  compile       the medium training step, compile + first run, in fresh processes: NumPy; Numba with an empty
                kernel cache (cold: every kernel compiled); Numba again on that cache (warm: loaded from disk)

Timing: graphgpt.timing.interleaved_times, every repetition running each contender once in a fresh random order
(one untimed run before each timed one for the steps); medians. On a shared machine the figures move with the
load: compare within a table, not across runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphgpt  # noqa: E402
from graphgpt.ir import GraphBuilder, TensorType, get_op  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes.manager import DEFAULT_PIPELINE  # noqa: E402
from graphgpt.passes.numba_backend.backend import SOURCES, NumbaBackend  # noqa: E402
from graphgpt.passes.numba_backend.engine import load_kernel  # noqa: E402
from graphgpt.timing import interleaved_times  # noqa: E402
from numexpr_kernels import NUMEXPR_KERNELS  # noqa: E402
from numexpr_kernels import unavailable_reason as numexpr_unavailable  # noqa: E402
from train_step import CONFIGS, build  # noqa: E402

# op, attributes, input shapes as functions of (rows, width)
KERNELS = {
    "layer_norm": ({"eps": 1e-5}, lambda r, w: [(r, w), (w,), (w,)]),
    "layer_norm_grad": ({"eps": 1e-5}, lambda r, w: [(r, w), (r, w), (w,)]),
    "softmax": ({"axis": 1}, lambda r, w: [(r, w)]),
    "gelu": ({}, lambda r, w: [(r, w)]),
    "gelu_grad": ({}, lambda r, w: [(r, w), (r, w)]),
    "bias + residual (fused)": ({"program": (("add", (0, 1)), ("add", (3, 2)))},
                                lambda r, w: [(r, w), (w,), (r, w)]),
}
SIZES = {"decode row 1 x 128": (1, 128), "training 8*128 x 256": (8 * 128, 256)}


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def kernel_contenders(name: str, rows: int, width: int) -> dict:
    attrs, shapes = KERNELS[name]
    op = "fused_elementwise" if "fused" in name else name
    builder = GraphBuilder()
    inputs = [builder.add_input(f"a{k}", TensorType(shape, "float32")) for k, shape in enumerate(shapes(rows, width))]
    node = builder.add_node(op, inputs, attrs).producer
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes(rows, width)]
    out = np.empty((rows, width), np.float32)
    numpy_kernel = get_op(op).compute_into
    runs = {"numpy": lambda: numpy_kernel(out, *arrays, **attrs)}
    if numexpr_unavailable() is None:
        expected = np.empty_like(out)
        numpy_kernel(expected, *arrays, **attrs)
        for label, threads in (("numexpr 1 thread", 1), ("numexpr threads", os.cpu_count())):
            if threads > 1 and rows == 1:
                continue
            NUMEXPR_KERNELS[name](out, *arrays, threads=threads)
            error = float(np.max(np.abs(out - expected)) / np.max(np.abs(expected)))
            if not error < 1e-5:  # float32 reordered sums differ by ~1e-7 of the scale; a wrong formula by ~1
                raise AssertionError(f"numexpr's {name} differs from the NumPy kernel by {error:.1e} of its scale")
            runs[label] = lambda threads=threads: NUMEXPR_KERNELS[name](out, *arrays, threads=threads)
    for label, parallel in (("numba 1 thread", False), ("numba prange", True)):
        if parallel and rows == 1:
            continue
        source = SOURCES[op](node, parallel)
        kernel = load_kernel(source.text, source.entry)
        kernel(out, *arrays)  # compiled (or loaded) before timing
        runs[label] = lambda kernel=kernel: kernel(out, *arrays)
    return runs


def kernels_table(repeats: int) -> None:
    print("== kernels: median us per call, float32 ==")
    labels = ["numpy", "numexpr 1 thread", "numexpr threads", "numba 1 thread", "numba prange"]
    if numexpr_unavailable() is not None:
        print(f"(no numexpr columns: {numexpr_unavailable()})")
    print(f"{'kernel':<26} {'size':<22}" + "".join(f" {label:>15}" for label in labels) + f" {'numpy / best numba':>19}")
    for size, (rows, width) in SIZES.items():
        for name in KERNELS:
            runs = kernel_contenders(name, rows, width)
            calls = 2000 if rows == 1 else 20
            timed = {label: (lambda run=run: [run() for _ in range(calls)]) for label, run in runs.items()}
            medians = {label: median_ms(times) * 1e3 / calls
                       for label, times in interleaved_times(timed, repeats, warm_each=True).items()}
            best = min(value for label, value in medians.items() if label.startswith("numba"))
            row = "".join(f" {medians[label]:>15.1f}" if label in medians else f" {'-':>15}" for label in labels)
            print(f"{name:<26} {size:<22}{row} {medians['numpy'] / best:>19.2f}")


def decode_table(repeats: int) -> None:
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(65, 128, 2, 4, max_seq_len=256)
    prompt = np.random.default_rng(0).integers(0, 65, (1, 16))
    generations = {backend: graphgpt.compile_generation(model, backend=backend) for backend in ("numpy", "numba")}
    tokens = {backend: generation.generate(prompt, 200, top_k=1, seed=0)  # compiles and warms
              for backend, generation in generations.items()}
    assert np.array_equal(tokens["numpy"], tokens["numba"]), "the backends generated different tokens"
    runs = {backend: (lambda generation=generation: generation.generate(prompt, 200, top_k=1, seed=0))
            for backend, generation in generations.items()}
    medians = {backend: median_ms(times) for backend, times in interleaved_times(runs, repeats).items()}
    print("== decode: GPT(65, 128, 2, 4, max_seq_len=256), 16-token prompt + 200 greedy tokens (same tokens) ==")
    for backend, milliseconds in medians.items():
        print(f"{backend:<8} {milliseconds:>8.1f} ms  {200 / milliseconds * 1e3:>8.0f} tokens/s  "
              f"numpy / this {medians['numpy'] / milliseconds:.2f}")


def training_table(config_name: str, repeats: int) -> None:
    config = CONFIGS[config_name]
    model, tokens, targets = build(config)
    no_fusion = list(DEFAULT_PIPELINE)
    options = {"numpy": {}, "numba": {"backend": "numba"},
               "numpy whole": {"shards": 1}, "numba whole": {"backend": "numba", "shards": 1},
               "numba no fusion": {"backend": "numba", "passes": no_fusion},
               "numba prange": {"backend": NumbaBackend(threads=True), "shards": 1}}
    steps = {name: graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, **option)
             for name, option in options.items()}
    for backend in ("numpy", "numba"):  # the step `graphgpt train` runs: with AdamW's update (each its own model)
        steps[f"{backend} + AdamW"] = graphgpt.compile(copy.deepcopy(model), tokens, targets, loss=F.cross_entropy,
                                                       optimizer=graphgpt.optim.AdamW(lr=1e-4), backend=backend)
    losses = {name: float(step.run(tokens, targets)) for name, step in steps.items()}
    runs = {name: (lambda step=step: step.run(tokens, targets)) for name, step in steps.items()}
    medians = {name: median_ms(times) for name, times in interleaved_times(runs, repeats, warm_each=True).items()}
    print(f"== training step {config_name} {config}: forward + backward (+ AdamW where named) ==")
    for name, milliseconds in medians.items():
        reference = medians["numpy + AdamW" if "AdamW" in name else "numpy"]
        print(f"{name:<16} {milliseconds:>8.1f} ms  numpy / this {reference / milliseconds:.2f}  "
              f"({steps[name].split.describe().split(' (')[0]}; loss {losses[name]:.6f})")


def compile_child(backend: str) -> None:
    """Prints the seconds of compiling the medium training step and of its first run (kernels compiled there)."""
    model, tokens, targets = build(CONFIGS["medium"])
    started = time.perf_counter()
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, backend=backend)
    compiled = time.perf_counter()
    step.run(tokens, targets)
    print(compiled - started, time.perf_counter() - compiled)


def compile_table() -> None:
    def child(backend: str, cache: str) -> tuple[float, float]:
        environment = dict(os.environ, GRAPHGPT_KERNEL_CACHE=cache)
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                f"import numba_kernels; numba_kernels.compile_child({backend!r})")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                                check=True)
        compile_seconds, first_run = map(float, result.stdout.split())
        return compile_seconds, first_run

    def import_seconds(module: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        return time.perf_counter() - started

    print("== compile: the medium training step, compile + first run, fresh processes ==")
    with tempfile.TemporaryDirectory() as cache:
        rows = {"numpy": child("numpy", cache), "numba cold": child("numba", cache),
                "numba warm": child("numba", cache)}
        kernels = len(list(Path(cache).glob("kernel_*.py")))
    for name, (compile_seconds, first_run) in rows.items():
        print(f"{name:<12} compile {compile_seconds:6.2f} s  first run {first_run:6.2f} s  "
              f"total {compile_seconds + first_run:6.2f} s")
    print(f"({kernels} kernel sources; a process importing numpy takes {import_seconds('numpy'):.2f} s, "
          f"numpy and numba {import_seconds('numpy, numba'):.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; no medium training step")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--kernels-only", action="store_true", help="only the kernels table")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"graphgpt.compile(..., backend='numpy' | 'numba'); {repeats} interleaved repetitions, medians; "
          f"{os.cpu_count()} cores (figures move with the machine's load)")
    kernels_table(repeats)
    if args.kernels_only:
        return
    decode_table(repeats)
    training_table("tiny", repeats)
    if not args.quick:
        training_table("medium", repeats)
    compile_table()


if __name__ == "__main__":
    main()
