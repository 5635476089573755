"""The `graphgpt` command line.

    graphgpt run [--layers 2 --embed 64 ...]   compile a GPT, print its IR, run it, and check it against eager
                                                (--seq-lens 8,16,31: at each length; --explain: the compile cache)
    graphgpt train [--data FILE --steps N ...]  train a character-level GPT with the compiled train step
    graphgpt generate --prompt TEXT             sample from a checkpoint

`train` and `generate` also read their options from `--config FILE` (TOML, training/config_file.py); flags given
on the command line override the file's values.

Every argument is checked before anything runs or is written: a value out of range (`--lr nan`, `--length -5`,
`--vocab 0`) or a combination that cannot work (`--shards 3 --batch 4`) is refused in one line,
`graphgpt <command>: error: ...`, with exit status 2, as argparse refuses an unknown option. Errors met while
running (unreadable data, damaged checkpoints, an unwritable checkpoint folder, a resume that cannot continue)
print `graphgpt: error: <message>` and exit with status 2, without a traceback; a training run that diverges
exits with status 1, and one stopped by SIGINT or SIGTERM with 128 + the signal's number, having saved a
checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, Optional

import numpy as np

from .run_command import command_run
from .training.commands import (add_generate_arguments, add_train_arguments, check_generate_arguments,
                                check_train_arguments, command_generate, command_train)


class UsageError(SystemExit):
    """An argument refused before the command runs: exits with status 2, as argparse does. Its text is the
    message (already printed to standard error as one line)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Parser(argparse.ArgumentParser):
    """argparse, but a refused argument is one line, `graphgpt train: error: argument --lr: ...`, without the
    usage text before it (`--help` shows that)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)


def number_in(accepted) -> Callable[[str], object]:
    """An argparse `type` reading one number that `accepted` (a training.options.NumberRange) allows, or `none` where
    the range gives None a meaning (`--clip none`: no clipping)."""
    def parse(text: str):
        if accepted.none_means is not None and text.lower() == "none":
            return None
        try:
            value = accepted.kind(text)
        except ValueError:  # not a number of that kind, e.g. '1.5' for a whole number, or 'ten'
            value = None
        if value is None or not accepted.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {accepted.describe()}, got {text!r}")
        return value

    parse.accepted = accepted  # a config file's values are checked against the same range (config_file.py)
    return parse


def non_empty(what: str) -> Callable[[str], str]:
    """An argparse `type` refusing the empty string (a file name or prompt that is not there)."""
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty string")
        return text

    return parse


def _ranges() -> dict:
    """The numbers each numeric option of every command accepts, by destination name: train's options as
    training.options.OPTION_RANGES (which train() also checks), the model's vocabulary as a checkpoint may hold it, and
    the options only the other commands have."""
    from .training.options import OPTION_RANGES, VOCABULARY_RANGE, NumberRange

    at_least_one = NumberRange(int, 1)
    return {**OPTION_RANGES, "vocab": VOCABULARY_RANGE, "shards": at_least_one, "collapse": at_least_one,
            "repeats": at_least_one, "length": at_least_one, "temperature": NumberRange(float, 0, above_low=True),
            "top_k": NumberRange(int, 0)}


def _add_number(parser, flag: str, name: str, default, help_text: str, default_text: str = "%(default)s",
                aliases: tuple[str, ...] = ()) -> None:
    """An option taking one number in the range of `name`; its help says the range and the default (the value,
    or `default_text` when the default is to decide later)."""
    accepted = _ranges()[name]
    parser.add_argument(flag, *aliases, dest=name, type=number_in(accepted), default=default,
                        help=f"{help_text}, {accepted.describe()} (default {default_text})")


def _add_shards_argument(parser: argparse.ArgumentParser, default_text: str) -> None:
    _add_number(parser, "--shards", "shards", None, "data-parallel shards of a training step, dividing --batch "
                "(1: never split)", default_text)


MODEL_ARGUMENTS = {"vocab": "vocabulary size", "embed": "embedding width", "layers": "transformer blocks",
                   "heads": "attention heads (dividing --embed)", "seq_len": "tokens per sequence",
                   "batch": "sequences per batch", "seed": "seed for weights and tokens"}
MODEL_DEFAULTS = {"vocab": 65, "embed": 64, "layers": 2, "heads": 4, "seq_len": 32, "batch": 4, "seed": 0}


def _add_model_arguments(parser: argparse.ArgumentParser, names=tuple(MODEL_ARGUMENTS)) -> None:
    """The options describing a GPT and its batch (those in `names`), each checked against its range; help shows
    the command's own default (set_defaults may change it)."""
    group = parser.add_argument_group("model")
    for name in names:
        _add_number(group, "--" + name.replace("_", "-"), name, MODEL_DEFAULTS[name], MODEL_ARGUMENTS[name])


def _lengths_wanted() -> str:
    return _ranges()["seq_len"].describe().replace("a whole number", "whole numbers", 1)  # 'whole numbers from 1 to'


def sequence_lengths(text: str) -> tuple[int, ...]:
    """An argparse `type` reading comma-separated sequence lengths (`8,16,31`), each in --seq-len's range."""
    words = text.split(",")
    if all(word.strip().isdigit() and _ranges()["seq_len"].accepts(int(word)) for word in words):
        return tuple(int(word) for word in words)
    raise argparse.ArgumentTypeError(f"expected {_lengths_wanted()} separated by commas, got {text!r}")


def _parse(argv) -> argparse.Namespace:
    """The arguments of `argv`, over the values of the --config file if one is given (checked in full first:
    a bad key or value is refused as a bad argument is)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    from .training.config_file import ConfigError, read_config

    try:
        values = read_config(args.config, args.command_parser)
    except ConfigError as error:
        args.refuse(str(error))
    args.command_parser.set_defaults(**values)
    return parser.parse_args(argv)


STAGES = ("forward", "train", "optimised")
SHARDS_SHOWN = "as compile decides; a split step shows the graphs that run, its shard and combine graphs"


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
        return graphgpt.compile(model, tokens, passes=[])
    return graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=args.shards,
                            passes=[] if args.stage == "train" else None)


def _check_stage_arguments(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with render's or ir's combination of arguments, or None."""
    if args.shards not in (None, 1) and args.stage == "forward":
        return "--shards splits a training step: use it with --stage train or optimised"
    if args.shards is not None and args.batch % args.shards:
        return (f"cannot split this training step into {args.shards} data-parallel shards: --batch {args.batch} "
                f"is not a multiple of {args.shards}")
    return None


def _check_render_arguments(args: argparse.Namespace) -> Optional[str]:
    from .render import FORMATS

    if args.stage is None:  # the passes run over the training step: the forward as traced goes through none
        args.stage = "optimised" if args.passes else "forward"
    if args.passes and args.stage != "optimised":
        return (f"--passes draws what each pass did, and --stage {args.stage} runs no passes: leave --stage out, "
                f"or give --stage optimised")
    problem = _check_stage_arguments(args)
    if problem is None and args.passes and args.collapse is not None:
        problem = "--collapse draws one diagram collapsed; --passes draws every pass in full: give one of them"
    if args.out is None:  # one diagram into a file, or a diagram per pass into a folder
        args.out = "passes" if args.passes else "graph.svg"
    extension = os.path.splitext(args.out)[1].lstrip(".").lower()
    if problem is None and not args.passes and extension not in ("", *FORMATS):
        problem = f"--out {args.out}: expected a file ending in {', '.join('.' + f for f in FORMATS)}"
    return problem


def _check_compare_arguments(args: argparse.Namespace) -> Optional[str]:
    """The report is written after minutes of measuring: its folder must be there and writable now."""
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out):
        return f"--out {args.out} is a folder; give a file name such as {os.path.join(args.out, 'compare.html')}"
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {args.out}: cannot write into {folder} (missing, not a folder, or not writable)"
    return None


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
    print(f"report: {report.write_html(args.out, lesson=args.lesson)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphgpt", description="Compile GPT models into static graphs and run them over NumPy.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="compile a GPT, print its IR, run it and compare with eager",
                              description="Compile a GPT, print its text IR, run the graph and check the result "
                                          "against eager (op by op) execution.")
    _add_model_arguments(run)
    run.add_argument("--seq-lens", type=sequence_lengths, default=None,
                     help=f"run the forward, compiled on first call, at these sequence lengths: {_lengths_wanted()} "
                          f"separated by commas, such as 8,16,31 (default: --seq-len alone)")
    run.add_argument("--explain", action="store_true",
                     help="print a line for each recompile and, at the end, the cache of compiled signatures")
    run.add_argument("--quiet", action="store_true", help="do not print the IR")
    run.set_defaults(handler=command_run)

    train = commands.add_parser("train", help="train a character-level GPT with the compiled train step",
                                description="Train a character-level GPT: each step is one compiled graph "
                                            "(forward, generated backward, AdamW update with gradient clipping) "
                                            "at a learning rate warmed up, then decayed along a cosine, as "
                                            "nanoGPT's. Prints a progress bar (ETA, ms/step, smoothed loss, "
                                            "tokens/s, GFLOP/s and their share of the matmul peak measured at "
                                            "start), training and validation losses, the final loss next to a "
                                            "unigram baseline, and samples; writes a loss log (loss.csv) and "
                                            "curve (loss.svg) beside the checkpoints, which are written "
                                            "atomically, and once more when stopped by Ctrl-C (SIGINT) or "
                                            "SIGTERM. A run whose loss goes NaN or infinite stops at once, naming "
                                            "the first node that made a NaN.")
    add_train_arguments(train)
    train.set_defaults(handler=command_train, check=check_train_arguments)

    render = commands.add_parser("render", help="draw a GPT's graph at some stage with graphviz",
                                 description="Draw the graph of a GPT: the forward as traced, the training step "
                                             "(forward + generated backward), or the optimised training step. "
                                             "SVG by default; .png and .pdf by extension.")
    _add_model_arguments(render)
    render.add_argument("--stage", choices=STAGES, default=None,
                        help="which graph (default forward; with --passes, optimised: the training step through "
                             "the default passes)")
    _add_shards_argument(render, SHARDS_SHOWN)
    _add_number(render, "--collapse", "collapse", None, "one box per module path cut to this many parts",
                "none; large graphs collapse anyway")
    render.add_argument("--out", default=None, type=non_empty("a file or folder name"),
                        help="output file (default graph.svg), or folder with --passes (default passes)")
    render.add_argument("--passes", action="store_true",
                        help="a diagram per pass and an index.html into the folder --out")
    render.set_defaults(handler=command_render, check=_check_render_arguments, batch=1, seq_len=8, layers=2,
                        embed=16)
    ir_command = commands.add_parser("ir", help="print the text IR of a GPT at some stage",
                                     description="Print the text IR of the forward, the training step or the "
                                                 "optimised training step.")
    _add_model_arguments(ir_command)
    ir_command.add_argument("--stage", choices=STAGES, default="forward", help="which graph (default forward)")
    _add_shards_argument(ir_command, SHARDS_SHOWN)
    ir_command.set_defaults(handler=command_ir, check=_check_stage_arguments, batch=1, seq_len=8, layers=2,
                            embed=16)

    compare = commands.add_parser("compare", help="static graph vs dynamic tape, side by side",
                                  description="Run one GPT training step through the eager tape and compiled "
                                              "graphs and answer, each from a measurement of the run: where the "
                                              "time goes, when compiling pays off, what only the static graph "
                                              "can do, what only the dynamic tape can do, and whether they agree. "
                                              "Times are medians of interleaved runs with their quartiles. Prints "
                                              "a table, writes an HTML report linking every graph it mentions.")
    # The comparison's vocabulary and seed are fixed (compare.VOCAB, seed 0): no options that would be ignored.
    _add_model_arguments(compare, ("embed", "layers", "heads", "seq_len", "batch"))
    _add_number(compare, "--repeats", "repeats", 15, "timed repetitions per measurement, interleaved")
    compare.add_argument("--out", default="compare.html", type=non_empty("a file name"),
                         help="HTML report (default compare.html), its graphs drawn into <name>_graphs/ beside it")
    compare.add_argument("--lesson", action="store_true", help="short explanations between the figures, for a class")
    compare.set_defaults(handler=command_compare, check=_check_compare_arguments, seq_len=32)

    generate = commands.add_parser("generate", help="sample text from a checkpoint",
                                   description="Continue a prompt with characters sampled from a trained GPT.")
    add_generate_arguments(generate)
    generate.set_defaults(handler=command_generate, check=check_generate_arguments)

    from .explorer.command import add_view_command  # `graphgpt view`: the command's body lives with the explorer
    view = add_view_command(commands, _add_model_arguments, _add_shards_argument, _check_stage_arguments)

    for command in (run, train, render, ir_command, compare, generate, view):
        command.set_defaults(refuse=command.error, command_parser=command)
    return parser


def main(argv=None) -> int:
    """Run the command line `argv` (sys.argv[1:] by default) and return its exit status. A refused argument
    raises UsageError (SystemExit with status 2), as argparse does, after printing one line."""
    args = _parse(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem is not None:
        args.refuse(problem)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, ImportError) as error:  # graphgpt's errors (a missing backend too) say what
        print(f"graphgpt: error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:  # a model or batch too large for this machine
        print(f"graphgpt: error: not enough memory for this model and batch ({error or 'MemoryError'})",
              file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`graphgpt ir | head`): nothing is wrong
        sys.stderr.close()
        return 0
    except OSError as error:  # the file system refused, e.g. an unwritable --checkpoint-dir or a full disk
        where = f": {error.filename}" if error.filename else ""
        print(f"graphgpt: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # `train` says itself whether a checkpoint can be resumed; nothing else saves
        print("\ngraphgpt: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
