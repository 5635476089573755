"""The `graphgpt` command line.

    graphgpt run [--layers 2 --embed 64 ...]   compile a GPT, print its IR, run it, and check it against eager
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--vocab", type=int, default=65, help="vocabulary size (default 65)")
    group.add_argument("--embed", type=int, default=64, help="embedding width (default 64)")
    group.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    group.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    group.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (default 32)")
    group.add_argument("--batch", type=int, default=4, help="sequences per batch (default 4)")
    group.add_argument("--seed", type=int, default=0, help="seed for weights and tokens (default 0)")


def command_run(args: argparse.Namespace) -> int:
    import graphgpt

    graphgpt.manual_seed(args.seed)
    model = graphgpt.nn.GPT(args.vocab, args.embed, args.layers, args.heads, max_seq_len=args.seq_len)
    tokens = np.random.default_rng(args.seed).integers(0, args.vocab, size=(args.batch, args.seq_len))

    started = time.perf_counter()
    fwd = graphgpt.compile(model, tokens)
    compile_seconds = time.perf_counter() - started
    if not args.quiet:
        print(fwd.graph)
        print()

    started = time.perf_counter()
    logits = fwd.run(tokens)
    run_seconds = time.perf_counter() - started
    eager = model(graphgpt.Tensor(tokens)).data
    difference = float(np.max(np.abs(logits - eager)))

    counts = fwd.graph.op_counts()
    print(f"GPT: vocab {args.vocab}, embed {args.embed}, {args.layers} layers, {args.heads} heads, "
          f"{model.num_parameters():,} parameters")
    print(f"graph: {len(fwd.graph.nodes)} nodes ({', '.join(f'{op} {n}' for op, n in sorted(counts.items()))})")
    print(f"compiled in {compile_seconds * 1e3:.1f} ms; ran tokens {list(tokens.shape)} -> logits "
          f"{list(logits.shape)} {logits.dtype} in {run_seconds * 1e3:.1f} ms")
    print(f"max |compiled - eager| = {difference:.3g}")
    if not np.allclose(logits, eager, rtol=1e-5, atol=1e-5):
        print("error: the compiled graph disagrees with eager execution", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphgpt", description="Compile GPT models into static graphs and "
                                     "run them over NumPy.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="compile a GPT, print its IR, run it and compare with eager",
                              description="Compile a GPT, print its text IR, run the graph and check the result "
                                          "against eager (op by op) execution.")
    _add_model_arguments(run)
    run.add_argument("--quiet", action="store_true", help="do not print the IR")
    run.set_defaults(handler=command_run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError) as error:  # graphgpt's errors say what and where; no traceback needed
        print(f"graphgpt: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
