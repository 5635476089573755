"""Why one Compiled serialises runs from several threads (a lock) instead of giving each thread buffers of its own.

    python benchmarks/threads.py [--rounds 7] [--runs 6]

Two threads each run the medium GPT's forward (65, 256 wide, 6 layers, 8 heads, T 128, batch 8) `runs` times:
once sharing one Compiled (runs take turns under its lock), once with a Compiled each (per-thread buffers, so
runs overlap). The two ways alternate in every round; prints medians, the ratio and its spread.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import graphgpt


def timed_threads(compileds, tokens, runs: int) -> float:
    def work(compiled):
        for _ in range(runs):
            compiled.run(tokens)

    threads = [threading.Thread(target=work, args=(compiled,)) for compiled in compileds]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(65, 256, 6, 8, max_seq_len=128)
    tokens = np.random.default_rng(0).integers(0, 65, (8, 128))
    shared = graphgpt.compile(model, tokens)
    own = [graphgpt.compile(model, tokens) for _ in range(2)]
    timed_threads([shared, shared], tokens, 1)  # warm both
    timed_threads(own, tokens, 1)
    locked, separate = [], []
    for _ in range(args.rounds):
        locked.append(timed_threads([shared, shared], tokens, args.runs))
        separate.append(timed_threads(own, tokens, args.runs))
    ratios = [b / a for a, b in zip(locked, separate)]
    print(f"2 threads x {args.runs} forward runs, median of {args.rounds} interleaved rounds:")
    print(f"  one Compiled, runs take turns (lock):   {statistics.median(locked) * 1e3:7.0f} ms")
    print(f"  a Compiled per thread (own buffers):   {statistics.median(separate) * 1e3:7.0f} ms")
    print(f"  own buffers / lock: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
