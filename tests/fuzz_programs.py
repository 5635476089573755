"""A deeper search than the test suite's: thousands of random programs through every path (eager, compiled with
no passes, with the default pipeline, with every pass), forward and backward, gradients against float64 central
differences; every other program's inputs hold 0.0, -0.0, infinities and NaN, and with PyTorch installed every
program is compared with torch too.

    python tests/fuzz_programs.py --programs 5000 [--seed 0] [--no-gradients] [--no-special] [--no-torch]

Prints programs tried, ops covered (of the registry's), and every mismatch with its program's text IR.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from graphgpt.ir import OPS  # noqa: E402
from random_programs import build, draw_recipe, inputs_for  # noqa: E402
from test_random_programs import ALL_PASSES, check_program  # noqa: E402

import graphgpt  # noqa: E402
from graphgpt.passes.autodiff import append_backward  # noqa: E402
from graphgpt.passes.manager import run_pipeline  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gradients", action="store_true", help="compare forward results only")
    parser.add_argument("--no-special", action="store_true", help="finite inputs only (no 0.0, -0.0, inf, NaN)")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with PyTorch even if installed")
    args = parser.parse_args()
    against_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    generator = random.Random(args.seed)
    covered: Counter = Counter()
    mismatches = []
    started = time.perf_counter()
    for index in range(args.programs):
        recipe = draw_recipe(lambda label, options: generator.choice(options))
        special = not args.no_special and index % 2 == 1
        try:
            check_program(recipe, seed=index, gradients=not args.no_gradients, special=special,
                          against_torch=against_torch)
        except (AssertionError, graphgpt.GraphError, ValueError, RuntimeError) as error:
            mismatches.append((index, f"{type(error).__name__}: {error}"))
        # count what the traced programs really contained (the built-in helpers add exp, mul, sum, ...)
        # ops the traced program and its generated backward graph contain, and those the passes made
        arrays = inputs_for(recipe, index)
        traced = graphgpt.trace(build(recipe), *arrays).graph
        backward = append_backward(traced, [value.name for value in traced.inputs]).graph
        covered.update(backward.op_counts())
        covered.update(run_pipeline(backward, ALL_PASSES)[0].op_counts())
    seconds = time.perf_counter() - started
    untested = sorted(set(OPS) - set(covered))
    print(f"programs tried: {args.programs} in {seconds:.0f} s; gradients checked: {not args.no_gradients}; "
          f"special values: {not args.no_special}; against torch: {against_torch}")
    print(f"ops covered: {len(set(covered) & set(OPS))} of {len(OPS)}; not generated: {', '.join(untested)}")
    print(f"mismatches found: {len(mismatches)}")
    for index, message in mismatches[:10]:
        print(f"--- program {index} ---\n{message}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
