"""The `graphgpt train` and `graphgpt generate` commands of the command line (graphgpt/cli.py builds the parser
and runs them): their options, each checked when parsed against the ranges training/options.py gives, the checks
of options together, and what each command runs and prints. Either command also reads its options from
`--config FILE` (training/config_file.py); the command line overrides the file.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from typing import Optional


def train_options(args: argparse.Namespace):
    from .options import TrainOptions

    return TrainOptions(**{name: getattr(args, name) for name in TrainOptions.__dataclass_fields__
                           if name != "progress"}, progress=not args.no_progress)


def check_train_arguments(args: argparse.Namespace) -> Optional[str]:
    """What the options together do not allow (--lr-min above --lr, --embed not divisible by --heads, ...)."""
    from .corpus import DataError
    from .options import validate_options

    try:
        validate_options(train_options(args))
    except DataError as error:
        return str(error)
    return None


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    from ..cli import non_empty

    parser.add_argument("--config", default=None, type=non_empty("a file name"), metavar="FILE",
                        help="a TOML file setting any of these options by its long name with underscores "
                             "(seq_len = 128, clip_grad_norm = 0.5, best = true); options given on the command "
                             "line override it (default: none)")


def resume_command(options) -> str:
    """The command that continues a run of `options`: `graphgpt train --resume` with every option it was given
    that a resumed run does not take from its checkpoint (the data, batch shape, steps, folder, ...)."""
    from .options import TrainOptions, option_flag
    from .trainer import RESUMED_SETTINGS

    defaults = TrainOptions()
    words = ["graphgpt", "train", "--resume"]
    for name in TrainOptions.__dataclass_fields__:
        value = getattr(options, name)
        if name in (*RESUMED_SETTINGS, "resume", "progress") or value == getattr(defaults, name):
            continue
        words += [option_flag(name)] if value is True else [option_flag(name), shlex.quote(str(value))]
    return " ".join(words)


def command_train(args: argparse.Namespace) -> int:
    from .trainer import LATEST, TrainingDiverged, train

    options = train_options(args)
    try:
        result = train(options)
    except TrainingDiverged as error:
        print(f"graphgpt: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the training loop listens for signals: reading, loading, compiling
        if os.path.isfile(os.path.join(options.checkpoint_dir, LATEST)):
            print(f"\ngraphgpt: interrupted; `{resume_command(options)}` continues from the checkpoint in "
                  f"{options.checkpoint_dir}", file=sys.stderr)
        else:
            print("\ngraphgpt: interrupted before training began; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    if result.stopped_by is not None:
        if result.checkpoint_step is not None and result.checkpoint_step < options.steps:
            print(f"graphgpt: `{resume_command(options)}` continues from step {result.checkpoint_step}",
                  file=sys.stderr)
        return 128 + signal.Signals[result.stopped_by]
    return 0 if math.isfinite(result.validation_loss) else 1


def command_generate(args: argparse.Namespace) -> int:
    from ..nn import GPT
    from .checkpoint import load_checkpoint
    from .corpus import Vocabulary
    from ..generation import compile_generation, sample_text
    from .sampling import check_sampling, checked_prompts, context_note, sample, sample_header

    checkpoint = load_checkpoint(args.checkpoint)
    model = GPT(**checkpoint.metadata["config"])
    model.load_state_dict(checkpoint.model_state)
    vocabulary = Vocabulary(checkpoint.metadata["vocabulary"])
    prompts = checked_prompts(args.prompt, args.prompt_file, vocabulary)
    check_sampling(args.length, args.temperature, args.top_k, args.seed)
    count = len(prompts) if args.num_samples is None else args.num_samples
    generation = None
    if not args.no_cache:  # one compiled prefill and decode graph for every sample (graphgpt/generation.py)
        generation = compile_generation(model, backend=args.backend)

    def note(text: str) -> None:
        print(f"graphgpt: note: {text}", file=sys.stderr)

    for index in range(count):  # the prompts in turn, each sample with its own seed
        prompt = prompts[index % len(prompts)]
        print(sample_header(index + 1, count, prompt))
        if (message := context_note(len(prompt), model.max_seq_len)) is not None:
            note(message)
        seed = args.seed + index
        if generation is None:
            print(sample(model, vocabulary, prompt, args.length, args.temperature, args.top_k, seed))
        else:
            print(sample_text(generation, vocabulary, prompt, args.length, args.temperature, args.top_k, seed, note))
    return 0


def check_generate_arguments(args: argparse.Namespace) -> Optional[str]:
    if (args.prompt is None) == (args.prompt_file is None):
        return "give the text to continue: --prompt TEXT or --prompt-file FILE (one prompt per line), not both"
    return None


TRAIN_HELP = {"steps": "training steps", "batch": "sequences per batch",
              "seq_len": "characters per sequence (also max_seq_len)", "embed": "embedding width",
              "layers": "transformer blocks", "heads": "attention heads (dividing --embed)", "seed": "random seed",
              "eval_every": "steps between evaluations (training and validation loss)",
              "eval_batches": "batches of each part of the text per evaluation",
              "checkpoint_every": "steps between checkpoints",
              "sample_chars": "characters per sample printed at the end (0: no samples)",
              "num_samples": "samples printed at the end, taking the prompts in turn",
              "lr": "AdamW peak learning rate, reached after --warmup",
              "warmup": "steps of linear learning-rate warmup",
              "lr_min": "learning rate the cosine decay reaches at the last step",
              "weight_decay": "AdamW weight decay",
              "clip": "global gradient-norm clip, as nanoGPT's grad_clip (0: no clipping)"}
DEFAULT_TEXTS = {"lr_min": "a tenth of --lr"}  # defaults decided when the run starts


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import _add_number, non_empty
    from .options import TrainOptions, option_flag

    defaults = TrainOptions()
    parser.add_argument("--data", default=None, type=non_empty("a file name"),
                        help="a UTF-8 text file (default: Python standard-library source)")
    for name, help_text in TRAIN_HELP.items():
        _add_number(parser, option_flag(name), name, getattr(defaults, name), help_text,
                    DEFAULT_TEXTS.get(name, "%(default)s"), aliases=("--clip",) if name == "clip" else ())
    parser.add_argument("--checkpoint-dir", default=defaults.checkpoint_dir, type=non_empty("a folder name"),
                        help=f"where latest.npz, the loss log loss.csv and its curve loss.svg are written "
                             f"(default {defaults.checkpoint_dir})")
    parser.add_argument("--best", action="store_true",
                        help="also keep best.npz, the checkpoint of the lowest validation loss so far")
    add_prompt_arguments(parser, "a line of the held-out text")
    add_backend_argument(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --checkpoint-dir with its model, optimizer settings, "
                             "learning-rate schedule and data-parallel split (so the result is bit for bit an "
                             "uninterrupted run's); give the same --data, --batch and --seq-len, and --steps "
                             "beyond the checkpoint's step")
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                        help="no progress bar (validation losses, the final report and samples still print)")
    add_config_argument(parser)


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    from ..passes.backends import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="what computes the compiled graphs' nodes: numpy (the reference) or numba (generated "
                             "kernels) (default: numba where the numba package is installed, else numpy)")


def add_prompt_arguments(parser: argparse.ArgumentParser, default_prompt: str) -> None:
    from ..cli import non_empty

    parser.add_argument("--prompt", default=None, type=non_empty("at least one character"),
                        help=f"text the samples continue; past the model's max_seq_len characters, they continue "
                             f"its last max_seq_len (default: {default_prompt})")
    parser.add_argument("--prompt-file", default=None, type=non_empty("a file name"), metavar="FILE",
                        help="a UTF-8 file of prompts, one per non-empty line, instead of --prompt (default: none)")


def add_generate_arguments(generate: argparse.ArgumentParser) -> None:
    from ..cli import _add_number, non_empty

    generate.add_argument("--checkpoint", default="checkpoints/latest.npz", type=non_empty("a file name"),
                          help="checkpoint file (default checkpoints/latest.npz)")
    add_prompt_arguments(generate, "none: give --prompt or --prompt-file")
    _add_number(generate, "--num-samples", "num_samples", None, "samples, taking the prompts in turn",
                "one per prompt")
    _add_number(generate, "--length", "length", 200, "characters to sample")
    _add_number(generate, "--temperature", "temperature", 0.8, "softmax temperature")
    _add_number(generate, "--top-k", "top_k", 10, "keep the k likeliest characters, 0 for all")
    _add_number(generate, "--seed", "seed", 0, "sampling seed of the first sample; the next ones take the "
                "following seeds")
    add_backend_argument(generate)
    generate.add_argument("--no-cache", action="store_true",
                          help="run the model eagerly on the whole context for every new token (no KV cache, not "
                               "compiled), for comparison; the same seed gives the same text either way")
    add_config_argument(generate)
