"""graphgpt run: a GPT's forward compiled on first call (graphgpt.compile(model)), run at each sequence length
asked for and checked against eager execution; with --explain, each recompile's reason and the cache at the
end. The argument parsing is in cli.py."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def command_run(args: argparse.Namespace) -> int:
    import graphgpt

    lengths = args.seq_lens or (args.seq_len,)
    graphgpt.manual_seed(args.seed)
    model = graphgpt.nn.GPT(args.vocab, args.embed, args.layers, args.heads, max_seq_len=max(args.seq_len, *lengths))
    rng = np.random.default_rng(args.seed)
    previous = graphgpt.explain_recompiles(True) if args.explain else None
    try:
        fwd = graphgpt.compile(model)  # traced at the first call's tokens, again for each new signature
        agree = all([_run_length(args, model, fwd, rng, length, first=index == 0)
                     for index, length in enumerate(lengths)])
        if args.explain:
            print()
            print(fwd.cache)
    finally:
        if args.explain:
            graphgpt.explain_recompiles(previous)
    if not agree:
        print("error: the compiled graph disagrees with eager execution", file=sys.stderr)
        return 1
    return 0


def _run_length(args: argparse.Namespace, model, fwd, rng, length: int, first: bool) -> bool:
    """Run the lazily compiled forward at one sequence length and check it against eager; True if they agree."""
    import graphgpt

    tokens = rng.integers(0, args.vocab, size=(args.batch, length))
    compiled_before = max((entry.number for entry in fwd.cache), default=0)
    started = time.perf_counter()
    logits = fwd.run(tokens)
    seconds = time.perf_counter() - started
    compiled_now = [entry.compile_seconds for entry in fwd.cache if entry.number > compiled_before]
    compile_seconds = sum(compiled_now)
    eager = model(graphgpt.Tensor(tokens)).data
    difference = float(np.max(np.abs(logits - eager)))

    if first:
        if not args.quiet:
            print(fwd.graph)
            print()
        counts = fwd.graph.op_counts()
        print(f"GPT: vocab {args.vocab}, embed {args.embed}, {args.layers} layers, {args.heads} heads, "
              f"{model.num_parameters():,} parameters")
        print(f"graph: {len(fwd.graph.nodes)} nodes ({', '.join(f'{op} {n}' for op, n in sorted(counts.items()))})")
    compiling = f"compiled in {compile_seconds * 1e3:.1f} ms; ran" if compiled_now else "ran (a compiled entry fits)"
    print(f"{compiling} tokens {list(tokens.shape)} -> logits {list(logits.shape)} {logits.dtype} in "
          f"{(seconds - compile_seconds) * 1e3:.1f} ms")
    print(f"max |compiled - eager| = {difference:.3g}")
    return bool(np.allclose(logits, eager, rtol=1e-5, atol=1e-5))
