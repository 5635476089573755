"""What a new size costs: a first compile (trace + passes + plan) against a new concrete size of a symbolic compile
(specialise + plan + schedule, no trace and no passes), side by side in one run, interleaved, medians and spread.

    python benchmarks/dynamic_shapes.py                 # the 6-layer GPT (65, 256, 6L, 8H, max 256), forward and step
    python benchmarks/dynamic_shapes.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphgpt
from graphgpt.nn import GPT
from graphgpt.nn import functional as F


def seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def spread(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"median {statistics.median(values) * 1e3:7.1f} ms (IQR {quartiles[0] * 1e3:.1f}-{quartiles[2] * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    model = GPT(vocab_size=65, embed_dim=256, num_layers=6, num_heads=8, max_seq_len=256)
    rng = np.random.default_rng(0)
    lengths = [16, 31, 64, 100, 128, 200, 256]

    def batch(length: int) -> np.ndarray:
        return rng.integers(0, 65, size=(4, length))

    for kind, options in (("forward", {}), ("training step", {"loss": F.cross_entropy, "shards": 1})):
        def example(length):
            return (batch(length), batch(length)) if options else (batch(length),)

        full, first_dynamic, new_size = [], [], []
        for round_ in range(args.repeats):
            length = lengths[round_ % len(lengths)]
            full.append(seconds(lambda: graphgpt.compile(model, *example(length), **options)))
            compiled = {}

            def first_call():  # trace, passes, and the plan and schedule of the first size
                dynamic = compiled["c"] = graphgpt.compile(model, *example(8), dynamic=True, **options)
                dynamic.specializations.get({"B": 4, "T": 8})

            first_dynamic.append(seconds(first_call))
            dynamic = compiled["c"]
            new_size.append(seconds(lambda: dynamic.specializations.get({"B": 4, "T": length})))
        ratio = statistics.median(new_size) / statistics.median(full)
        print(f"{kind}:")
        print(f"  static compile at a new size             {spread(full)}")
        print(f"  first call, symbolic (trace+passes+plan) {spread(first_dynamic)}")
        print(f"  new size of a symbolic compile (plan)    {spread(new_size)}")
        print(f"  new size / static compile                {ratio:.2f}")


if __name__ == "__main__":
    main()
