"""One GPT training step (forward + backward), measured side by side in one run.

    python benchmarks/train_step.py                 # the medium config: vocab 65, embed 256, 6 layers, 8 heads,
                                                    # T 128, batch 8, float32
    python benchmarks/train_step.py --tiny          # embed 64, 2 layers, 4 heads, T 32, batch 8 (per-op overhead)
    python benchmarks/train_step.py --wide          # vocab 512, embed 512, 4 layers, 8 heads, T 128, batch 8
    python benchmarks/train_step.py --train         # graphgpt train's default model: embed 64, 2 layers, T 64,
                                                    # batch 16
    python benchmarks/train_step.py --tiny --backend numpy --no-memory --repeats 5 --skip torch-compile

Contenders, all from the same float32 weights and batch (benchmarks/step_contenders.py builds them):
  compiled         graphgpt.compile(..., loss=cross_entropy) with the default passes, run as its default
                   data-parallel split (the medium step: two half-batch shards, one per core); --backend chooses
                   what computes its nodes (numba's generated kernels, the default where numba is installed, or the
                   NumPy interpreter), as for the next two
  compiled-whole   the same, shards=1: the whole batch in one schedule, BLAS on every core (one thread for a
                   small step while the machine is busy, as graphgpt chooses)
  compiled-nopass  no optimisation passes (and the default split)
  eager            graphgpt eager: model(Tensor(x)), loss.backward() on the tape
  numpy            a hand-written vectorised NumPy forward+backward (benchmarks/baseline_numpy.py)
  numpy-split      the same by hand on two half batches, one thread each with one BLAS thread, gradients
                   averaged: what the compiled step's data-parallel split does, done by hand (for reference:
                   ratios stay against `numpy`, the baseline as written)
  torch            PyTorch eager on CPU (benchmarks/baseline_torch.py), when torch is installed
  torch-compile    the same forward through torch.compile (inductor, CPU: generated C++/OpenMP loops, GEMMs in
                   MKL), backward compiled by AOTAutograd; when torch is installed and inductor finds a C++
                   compiler ($CXX, g++ by default). Compiled cold into a fresh $TORCHINDUCTOR_CACHE_DIR (a
                   temporary folder), then again warm in a fresh process reading that cache
  jax              the model written in jax.numpy, jax.jit(jax.value_and_grad(loss)) on XLA's CPU backend
                   (benchmarks/baseline_jax.py), when jax is installed (`pip install "jax[cpu]"`)
A contender that cannot run here is named with the reason. Before timing, every contender's loss and gradients
are checked against the compiled step's (float32: a wrong formula errs by order one, reordered sums by ~1e-5).

Timing: every repetition runs each contender in a fresh random order, one untimed step then one timed step back to
back (noise on this shared 2-core machine hits all of them alike, no contender always follows the same one, and
each is measured in its steady state); medians are reported with ratios. GFLOP/s use the graph's FLOP count (the
same work for every contender) and are shown as a share of the NumPy float32 matmul peak measured in the same run
(the best of one 1024x1024 matmul per repetition, timed among the steps in the same random order).
Compile times: graphgpt.compile, jax.jit's XLA compile, torch.compile's first step (cold and warm), then each
one's first step. Peak memory: each contender runs twice more in a fresh subprocess, reporting the rise of its peak
resident set over the resident set before (weights loaded, graphs compiled): for the compiled steps that includes
first touching their planned buffers. Last, where the compiled step's time goes (compiled.profile): GEMMs,
generated kernels, row-wise, elementwise and copies, and the Python between them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from graphgpt.timing import interleaved_times  # noqa: E402
from graphgpt.passes.analysis import graph_flops  # noqa: E402
from graphgpt.passes.backends import BACKENDS, default_backend  # noqa: E402
from blas_kernel import describe_blas  # noqa: E402
from step_contenders import CONFIGS, build, contender_builders  # noqa: E402

# Agreement with the compiled step, in float32: the loss relative to itself, each gradient relative to its
# largest entry. Reordered float32 sums differ by ~1e-6-1e-5 here; a wrong formula by order one.
LOSS_TOLERANCE, GRADIENT_TOLERANCE = 1e-4, 1e-3
# The compiled contenders whose compile time is reported (build = compile; torch-compile's build is its first step)
COMPILING = ("compiled", "compiled-whole", "compiled-nopass", "torch-compile", "jax")


def build_contenders(builders: dict) -> tuple[dict, dict]:
    """Each contender built and run once (first-run allocations, caches), and (build, first step) seconds."""
    contenders, startup = {}, {}
    for name, make in builders.items():
        started = time.perf_counter()
        contender = make()
        built = time.perf_counter()
        contender.run()
        contenders[name], startup[name] = contender, (built - started, time.perf_counter() - built)
    return contenders, startup


def gradient_error(grads: dict, reference: dict) -> float:
    """The largest difference over every gradient, relative to that gradient's largest entry."""
    if set(grads) != set(reference):
        return float("inf")
    return max(float(np.abs(np.asarray(grads[name]) - value).max()) / max(float(np.abs(value).max()), 1e-3)
               for name, value in reference.items())


def check_agreement(contenders: dict) -> str:
    """Every contender's loss and gradients against the compiled step's, so a reader sees they do the same work;
    exits naming the first that does not."""
    reference_loss, reference_grads = (compiled := contenders["compiled"]).outcome(compiled.run())
    parts = [f"compiled {reference_loss:.6f}"]
    for name, contender in contenders.items():
        if name == "compiled":
            continue
        loss, grads = contender.outcome(contender.run())
        error = gradient_error(grads, reference_grads)
        if abs(loss - reference_loss) > LOSS_TOLERANCE * abs(reference_loss) or error > GRADIENT_TOLERANCE:
            sys.exit(f"{name} does not compute the compiled step: loss {loss:.6f} vs {reference_loss:.6f}, "
                     f"gradients differ by up to {error:.2e} of their largest entries "
                     f"(tolerated {GRADIENT_TOLERANCE:g})")
        parts.append(f"{name} {loss:.6f} (gradients within {error:.1e})")
    return ", ".join(parts)


# The peak: one float32 matmul of this size, timed among the contenders' steps in every repetition, best time kept
PEAK_SIZE, PEAK = 1024, ("matmul peak",)  # a key no contender's name can be


def matmul_peak_step(size: int = PEAK_SIZE):
    """One NumPy float32 matmul (BLAS on every core) into a preallocated result; 2 size**3 FLOPs."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    return lambda: np.matmul(a, a, out=out)


def in_fresh_process(function: str, config_name: str, contender: str, backend: str) -> float:
    """The number `function(config_name, contender, backend)` of this module prints in a fresh process (NaN if
    it fails); the environment, $TORCHINDUCTOR_CACHE_DIR included, is this process's."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r});"
            f"import train_step as t; print(t.{function}({config_name!r}, {contender!r}, {backend!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(config_name: str, contender: str, backend: str) -> float:
    """Peak resident set during two steps, above the resident set before them (MiB). Linux only: writing 5 to
    /proc/self/clear_refs resets the high-water mark after setup (compiling, building the model)."""
    config = CONFIGS[config_name]
    model, tokens, targets = build(config)
    run = contender_builders(config, model, tokens, targets, backend)[0][contender]().run
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    run()
    run()
    return (_status_kib("VmHWM") - baseline) / 1024


def build_seconds_child(config_name: str, contender: str, backend: str) -> float:
    """Seconds to build `contender` in this (fresh) process, its packages already imported: torch.compile's
    warm compile, when $TORCHINDUCTOR_CACHE_DIR holds what an earlier process compiled."""
    config = CONFIGS[config_name]
    model, tokens, targets = build(config)
    make = contender_builders(config, model, tokens, targets, backend)[0][contender]
    started = time.perf_counter()
    make()
    return time.perf_counter() - started


def print_startup(startup: dict, warm_torch_compile: float) -> None:
    parts = []
    for name in (name for name in COMPILING if name in startup):
        compile_seconds, first_step = startup[name]
        if name == "torch-compile":
            parts.append(f"torch-compile {compile_seconds:.2f} cold (fresh cache dir), {warm_torch_compile:.2f} "
                         f"warm (fresh process, same cache dir), first step after {first_step * 1e3:.1f} ms")
        else:
            parts.append(f"{name} {compile_seconds:.2f} + first step {first_step * 1e3:.1f} ms")
    print("compile seconds (graphgpt.compile, jax.jit's XLA compile, torch.compile's first step): "
          + "; ".join(parts))


def print_profile(compiled, tokens, targets, interleaved_seconds: float, repeats: int, run_repeats: int) -> None:
    """Where the compiled step's time goes, by category, then what lies around its steps, each layer measured in
    one window: the steps timed one at a time (the profile), the same parts run whole through their generated code
    (the profile too), the program's run (the split's shards side by side), and compiled.run, the last two
    interleaved (`run_repeats` times each)."""
    profile = compiled.profile(tokens, targets, repeats=repeats)
    arrays = [np.asarray(tokens), np.asarray(targets)]
    params = list(compiled.parameter_values().values())  # in the program's order; a step without an update
    runs = interleaved_times({"compiled.run": lambda: compiled.run(tokens, targets),
                              "program.run": lambda: compiled.program.run(arrays, params)}, run_repeats,
                          warm_each=True)
    alone, program = (statistics.median(runs[name]) for name in ("compiled.run", "program.run"))
    steps, whole = profile.seconds, profile.run_seconds
    parts = (f"one shard of {compiled.split.shards} alone on one BLAS thread, then the combine graph"
             if profile.split else "its one schedule, " + ("on one BLAS thread (a small step, the machine busy)"
                                                            if compiled.program.one_blas_thread
                                                            else "BLAS on every core"))
    print(f"where the compiled step goes (compiled.profile, median of {repeats}; {parts}; shares of compiled.run "
          f"timed alone):")
    by_category = profile.seconds_by("category")
    rows = [(name, by_category.get(name, 0.0)) for name in
            ("GEMM", "generated kernels", "row-wise", "elementwise", "copies and views")]
    rows += [("steps timed one at a time", steps),
             ("Python and dispatch overhead", (whole - steps) + (alone - program)),
             ("  between the kernel calls", whole - steps),
             ("  in Compiled.run", alone - program)]
    # What program.run adds to the parts run alone: for an unsplit step they are the same run timed twice
    rows.append(("shards side by side" if profile.split else "the same run timed twice", program - whole))
    rows.append(("compiled.run alone", alone))
    for name, seconds in rows:
        print(f"  {name:<30} {seconds * 1e3:9.2f} ms {seconds / alone:6.1%}")
    what_program_run_adds = (
        f"Shards side by side: program.run less one shard alone and the combine graph: the {compiled.split.shards} "
        f"shards on their threads at once (sharing the cores and memory, handing off, summing their outputs)"
        if profile.split else
        "The same run timed twice: program.run less the profile's whole run of the same schedule, the noise of "
        "this window")
    print(f"  (between the kernel calls: the parts run whole through their generated code ({whole * 1e3:.2f} ms) "
          f"less their steps, which the profile times through its interpreter loop, ~1-2 us a step slower, so "
          f"this can come out negative; NumPy's own per-call dispatch is inside each category. In Compiled.run: "
          f"compiled.run less program.run ({program * 1e3:.2f} ms): checking inputs, binding parameters, copying "
          f"results. {what_program_run_adds}.)")
    print(f"  in the interleaved timing above the step took {interleaved_seconds * 1e3:.2f} ms: "
          f"{(interleaved_seconds - alone) * 1e3:+.2f} ms beside compiled.run alone, from the other contenders' "
          f"threads still running after their steps and the machine's load then")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_choice = parser.add_mutually_exclusive_group()
    config_choice.add_argument("--tiny", action="store_true", help="the tiny config (embed 64, 2 layers, T 32)")
    config_choice.add_argument("--wide", action="store_true", help="the wide config (vocab 512, embed 512, 4 layers)")
    config_choice.add_argument("--train", action="store_true",
                               help="graphgpt train's default model (embed 64, 2 layers, T 64, batch 16)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timed steps per contender (default: 9)")
    parser.add_argument("--profile-repeats", type=int, default=5,
                        help="repetitions of the compiled step's profile (default: 5)")
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend(),
                        help="what computes graphgpt's compiled steps (default: %(default)s, the fastest installed)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="CONTENDER",
                        help="contenders to leave out (e.g. torch-compile: its cold compile takes a minute here); "
                             "compiled is the reference and stays")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    config_name = "tiny" if args.tiny else "wide" if args.wide else "train" if args.train else "medium"
    config = CONFIGS[config_name]
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    # torch.compile compiles cold into an empty cache folder; a fresh process then measures it warm from there
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache = tempfile.mkdtemp(prefix="train-step-inductor-")
    try:
        model, tokens, targets = build(config)
        builders, skipped = contender_builders(config, model, tokens, targets, args.backend)
        unknown = set(args.skip) - set(builders) - set(skipped)
        if unknown or "compiled" in args.skip:
            parser.error(f"--skip takes contenders other than compiled ({', '.join(list(builders)[1:])}), "
                         f"got {', '.join(sorted(unknown)) or 'compiled'}")
        for name, reason in skipped.items():
            print(f"({name} skipped: {reason})")
        builders = {name: make for name, make in builders.items() if name not in args.skip}
        contenders, startup = build_contenders(builders)
        agreement = check_agreement(contenders)
        warm = (in_fresh_process("build_seconds_child", config_name, "torch-compile", args.backend)
                if "torch-compile" in contenders else float("nan"))

        # A fresh random order each repetition: a fixed cycle would always run the same contender right after
        # PyTorch, whose OpenMP workers keep spinning for a while after a step and take the cores from whatever
        # runs next. Each contender runs one untimed step first (it absorbs the previous contender's spinning
        # threads and leaves its own warm), then the timed one: back to back, as in a training loop.
        # The matmul peak is sampled in the same rounds, across the window the steps were timed in, not in one
        # moment that may be busier or quieter than the rest (a 1-core moment read 77 GFLOP/s, beaten by the steps)
        runs = {name: contender.run for name, contender in contenders.items()}
        times = interleaved_times({**runs, PEAK: matmul_peak_step()}, args.repeats, warm_each=True)
        peak = 2 * PEAK_SIZE ** 3 / min(times.pop(PEAK)) / 1e9
        medians = {name: statistics.median(values) for name, values in times.items()}

        compiled = contenders["compiled"].compiled
        flops = graph_flops(compiled.graph)
        print(f"GPT {config_name}: {json.dumps(config)}; graphgpt backend {args.backend}; {args.repeats} "
              f"interleaved repetitions, medians")
        print(f"one step = {flops / 1e9:.2f} GFLOP (graph count); NumPy float32 matmul peak here {peak:.0f} "
              f"GFLOP/s (best of {args.repeats} {PEAK_SIZE}x{PEAK_SIZE} matmuls timed among the steps)")
        print(describe_blas())
        print(f"loss of the batch: {agreement}")
        print_startup(startup, warm)
        memory = {} if args.no_memory else {name: in_fresh_process("memory_child", config_name, name, args.backend)
                                            for name in contenders}
        header = f"{'contender':<16} {'median ms':>10} {'GFLOP/s':>8} {'% peak':>7} {'peak RSS rise MiB':>18}"
        reference_names = [name for name in ("torch", "torch-compile", "jax", "numpy", "eager") if name in medians]
        header += "".join(f" {'/ ' + name:>15}" for name in reference_names)
        print(header)
        for name in contenders:
            gflops = flops / medians[name] / 1e9
            row = f"{name:<16} {medians[name] * 1e3:>10.1f} {gflops:>8.1f} {gflops / peak:>7.0%} "
            row += f"{memory.get(name, float('nan')):>18.1f}"
            row += "".join(f" {medians[name] / medians[ref]:>15.2f}" for ref in reference_names)
            print(row)
        # Planned: every schedule that runs (each shard's and the combine graph's); kept: the whole step as one graph.
        planned, keep_all = compiled.planned_bytes, compiled.program.whole.stages[-1].keep_all_bytes
        running = ", ".join(f"{name} {len(graph.nodes)} nodes" for name, graph in compiled.graphs.items())
        print(f"compiled: runs {running}; planned buffers {planned / 2**20:.1f} MiB vs "
              f"{keep_all / 2**20:.1f} MiB to keep every intermediate of the whole step ({planned / keep_all:.0%}); "
              f"{compiled.split.describe()}")
        print_profile(compiled, tokens, targets, medians["compiled"], args.profile_repeats, args.repeats)
    finally:
        shutil.rmtree(inductor_cache, ignore_errors=True)


if __name__ == "__main__":
    main()
