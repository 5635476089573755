"""The kernel choices graphgpt makes, each measured against the plain NumPy it replaces, at the medium GPT's
shapes (batch 8, T 128, embed 256, MLP 1024, 8 heads), interleaved in random order, medians.

    python benchmarks/kernels.py [--repeats 40]

Each line: the kernel graphgpt uses, the alternative, and their ratio (below 1: ours is faster), twice: with
inputs warm (the call just ran, as when a node reads what the node before it wrote) and cold (evicted from cache,
as when a backward node reads an activation written long before in the forward pass). The NumPy side of the
two gradient kernels is the primitive chain they replace, run eagerly (its temporaries freshly allocated).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from graphgpt.ir import get_op
from graphgpt.ir.ops.elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI
from graphgpt.ir.ops.reductions import sum_along


def gelu_grad_primitives(g, x):
    """The primitive chain the GELU gradient rule used to emit (one NumPy call per node)."""
    t = np.tanh((x + x * x * x * GELU_CUBIC) * GELU_SQRT_2_OVER_PI)
    du_dx = (x * x * (3.0 * GELU_CUBIC) + 1.0) * GELU_SQRT_2_OVER_PI
    return g * ((t + 1.0) * 0.5 + x * 0.5 * (1.0 - t * t) * du_dx)


def layer_norm_grad_primitives(g, x, gamma, eps):
    centered = x - x.mean(-1, keepdims=True)
    inverse_std = 1.0 / np.sqrt((centered * centered).mean(-1, keepdims=True) + eps)
    normalized = centered * inverse_std
    scaled = g * gamma
    return (scaled - scaled.mean(-1, keepdims=True)
            - normalized * (scaled * normalized).mean(-1, keepdims=True)) * inverse_std


def pairs(rng):
    """name -> (graphgpt's kernel, the NumPy alternative), each a no-argument function."""
    def run(op, out, *arrays, **attrs):
        return lambda: get_op(op).evaluate_into(out, list(arrays), attrs)

    rows = rng.standard_normal((8, 128, 256), dtype=np.float32)
    wide = rng.standard_normal((8, 128, 1024), dtype=np.float32)
    wide_g = rng.standard_normal((8, 128, 1024), dtype=np.float32)
    scores = rng.standard_normal((8, 8, 128, 128), dtype=np.float32)
    gamma = rng.standard_normal(256).astype(np.float32)
    tokens = rng.integers(0, 65, (8, 128))
    table, out_rows, out_wide = np.empty((65, 256), np.float32), np.empty_like(rows), np.empty_like(wide)

    def add_at():
        table.fill(0)
        np.add.at(table, tokens.reshape(-1), rows.reshape(-1, 256))

    return {
        "row sums in kernels (sum_along: GEMV)": (lambda: sum_along(rows, 2),
                                                  lambda: np.sum(rows, axis=2, keepdims=True)),
        "softmax over attention scores": (run("softmax", np.empty_like(scores), scores, axis=3), None),
        "scatter_add (sorted runs)": (run("scatter_add", table, rows, tokens, num_rows=65), add_at),
        "gelu_grad (one kernel)": (run("gelu_grad", out_wide, wide_g, wide),
                                   lambda: gelu_grad_primitives(wide_g, wide)),
        "layer_norm_grad (one kernel)": (run("layer_norm_grad", out_rows, rows, rows, gamma, eps=1e-5),
                                         lambda: layer_norm_grad_primitives(rows, rows, gamma, 1e-5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    contenders = {(name, side): function for name, both in pairs(rng).items()
                  for side, function in zip(("ours", "numpy"), both) if function is not None}
    evict = np.empty(64 << 20, np.uint8)  # larger than the 32 MiB L3
    times = {(key, state): [] for key in contenders for state in ("warm", "cold")}
    for _ in range(args.repeats):
        order = list(times)
        random.shuffle(order)
        for key, state in order:
            if state == "cold":
                evict[::64] = 1
            else:
                contenders[key]()
            start = time.perf_counter()
            contenders[key]()
            times[(key, state)].append(time.perf_counter() - start)
    print(f"medians of {args.repeats} interleaved calls")
    print(f"{'kernel':38s} {'state':>5s} {'ours ms':>9s} {'numpy ms':>9s} {'ratio':>7s}")
    for name in dict.fromkeys(name for name, _ in contenders):
        for state in ("warm", "cold"):
            ours = statistics.median(times[((name, "ours"), state)]) * 1e3
            if ((name, "numpy"), state) in times:
                theirs = statistics.median(times[((name, "numpy"), state)]) * 1e3
                print(f"{name:38s} {state:>5s} {ours:9.3f} {theirs:9.3f} {ours / theirs:7.2f}")
            else:
                print(f"{name:38s} {state:>5s} {ours:9.3f} {'-':>9s} {'-':>7s}")


if __name__ == "__main__":
    main()
