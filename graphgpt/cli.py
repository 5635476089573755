"""The `graphgpt` command line.

    graphgpt run [--layers 2 --embed 64 ...]   compile a GPT, print its IR, run it, and check it against eager
    graphgpt train [--data FILE --steps N ...]  train a character-level GPT with the compiled train step
    graphgpt generate --prompt TEXT             sample from a checkpoint

Errors a user can meet (bad options, unreadable data, damaged checkpoints, an unwritable checkpoint folder) print
`graphgpt: error: <message>` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _add_shards_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=None,
                        help="data-parallel shards of a training step (default: as compile decides; 1: never "
                             "split); a split step shows the graphs that run, its shard and combine graphs")


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


def command_train(args: argparse.Namespace) -> int:
    from .training.trainer import TrainOptions, train

    options = TrainOptions(**{name: getattr(args, name) for name in TrainOptions.__dataclass_fields__
                              if name != "progress"}, progress=not args.no_progress)
    result = train(options)
    return 0 if np.isfinite(result.validation_loss) else 1


def command_generate(args: argparse.Namespace) -> int:
    from .nn import GPT
    from .training.checkpoint import load_checkpoint
    from .training.corpus import Vocabulary
    from .training.sampling import sample

    checkpoint = load_checkpoint(args.checkpoint)
    model = GPT(**checkpoint.metadata["config"])
    model.load_state_dict(checkpoint.model_state)
    vocabulary = Vocabulary(checkpoint.metadata["vocabulary"])
    print(sample(model, vocabulary, args.prompt, args.length, args.temperature, args.top_k, args.seed))
    return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .training.trainer import TrainOptions

    defaults = TrainOptions()
    parser.add_argument("--data", default=None, help="a UTF-8 text file (default: Python standard-library source)")
    for name, help_text in (("steps", "training steps"), ("batch", "sequences per batch"),
                            ("seq_len", "characters per sequence (also max_seq_len)"), ("embed", "embedding width"),
                            ("layers", "transformer blocks"), ("heads", "attention heads"), ("seed", "random seed"),
                            ("eval_every", "steps between validation losses"),
                            ("eval_batches", "held-out batches per validation"),
                            ("checkpoint_every", "steps between checkpoints"),
                            ("sample_chars", "characters per sample printed at the end")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=getattr(defaults, name),
                            help=f"{help_text} (default {getattr(defaults, name)})")
    for name, help_text in (("lr", "AdamW learning rate"), ("weight_decay", "AdamW weight decay"),
                            ("clip", "global gradient-norm clip")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=float, default=getattr(defaults, name),
                            help=f"{help_text} (default {getattr(defaults, name)})")
    parser.add_argument("--checkpoint-dir", default=defaults.checkpoint_dir,
                        help=f"where latest.npz is written (default {defaults.checkpoint_dir})")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                        help="no progress bar (validation losses, the final report and samples still print)")


STAGES = ("forward", "train", "optimised")


def _stage(args: argparse.Namespace):
    """The compiled graph of a stage: the forward as traced, the training step as generated (forward and the
    generated backward, no passes), or that step after the default passes. The optimizer update is left out: its
    hundreds of per-parameter nodes would crowd a diagram (compile with optimizer= to see them)."""
    import graphgpt
    from graphgpt.nn import functional as F

    graphgpt.manual_seed(args.seed)
    model = graphgpt.nn.GPT(args.vocab, args.embed, args.layers, args.heads, max_seq_len=args.seq_len)
    tokens = np.random.default_rng(args.seed).integers(0, args.vocab, size=(args.batch, args.seq_len))
    if args.stage == "forward":
        if args.shards not in (None, 1):
            raise SystemExit("graphgpt: --shards splits a training step: use it with --stage train or optimised")
        return graphgpt.compile(model, tokens, passes=[])
    try:
        return graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=args.shards,
                                passes=[] if args.stage == "train" else None)
    except ValueError as error:  # a split that cannot be proved exact says why
        raise SystemExit(f"graphgpt: {error}") from None


def command_render(args: argparse.Namespace) -> int:
    compiled = _stage(args)
    if args.passes:
        print(compiled.render_passes(args.out))
    else:
        print(compiled.render(args.out, collapse=args.collapse))
    return 0


def command_ir(args: argparse.Namespace) -> int:
    print(_stage(args).ir)  # the graphs that run, each headed by its name
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    report = compare(args.embed, args.layers, args.heads, args.seq_len, args.batch, repeats=args.repeats)
    print(report.table())
    print(f"report: {report.write_html(args.out)}")
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

    train = commands.add_parser("train", help="train a character-level GPT with the compiled train step",
                                description="Train a character-level GPT: each step is one compiled graph "
                                            "(forward, generated backward, AdamW update). Prints progress, "
                                            "validation losses, the final loss next to a unigram baseline, and "
                                            "samples; writes checkpoints atomically.")
    _add_train_arguments(train)
    train.set_defaults(handler=command_train)

    render = commands.add_parser("render", help="draw a GPT's graph at some stage with graphviz",
                                 description="Draw the graph of a GPT: the forward as traced, the training step "
                                             "(forward + generated backward), or the optimised training step. SVG by default; .png and .pdf by extension.")
    _add_model_arguments(render)
    render.add_argument("--stage", choices=STAGES, default="forward", help="which graph (default forward)")
    _add_shards_argument(render)
    render.add_argument("--collapse", type=int, default=None,
                        help="one box per module path cut to this many parts (large graphs collapse anyway)")
    render.add_argument("--out", default="graph.svg", help="output file, or folder with --passes")
    render.add_argument("--passes", action="store_true",
                        help="a diagram per pass and an index.html into the folder --out")
    render.set_defaults(handler=command_render, batch=1, seq_len=8, layers=2, embed=16)
    ir_command = commands.add_parser("ir", help="print the text IR of a GPT at some stage",
                                     description="Print the text IR of the forward, the training step or the "
                                                 "optimised training step.")
    _add_model_arguments(ir_command)
    ir_command.add_argument("--stage", choices=STAGES, default="forward", help="which graph (default forward)")
    _add_shards_argument(ir_command)
    ir_command.set_defaults(handler=command_ir, batch=1, seq_len=8, layers=2, embed=16)

    compare = commands.add_parser("compare", help="static graph vs dynamic tape, side by side",
                                  description="Run one GPT training step through the eager tape and the compiled "
                                              "graph: node counts, step time, peak memory, agreement of the loss "
                                              "and every gradient, merged operations, and growth with model "
                                              "size and sequence length. Prints a table, writes an HTML report.")
    _add_model_arguments(compare)
    compare.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default 5)")
    compare.add_argument("--out", default="compare.html", help="HTML report (default compare.html)")
    compare.set_defaults(handler=command_compare, seq_len=32)

    generate = commands.add_parser("generate", help="sample text from a checkpoint",
                                   description="Continue a prompt with characters sampled from a trained GPT.")
    generate.add_argument("--checkpoint", default="checkpoints/latest.npz", help="checkpoint file")
    generate.add_argument("--prompt", required=True, help="text to continue (at most max_seq_len characters)")
    generate.add_argument("--length", type=int, default=200, help="characters to sample (default 200)")
    generate.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default 0.8)")
    generate.add_argument("--top-k", type=int, default=10, help="keep the k likeliest characters, 0 for all")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    generate.set_defaults(handler=command_generate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError) as error:  # graphgpt's errors say what and where; no traceback needed
        print(f"graphgpt: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`graphgpt ir | head`): nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as error:  # the file system refused, e.g. an unwritable --checkpoint-dir or a full disk
        where = f": {error.filename}" if error.filename else ""
        print(f"graphgpt: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngraphgpt: interrupted; `graphgpt train --resume` continues from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
