"""The options of a training run (TrainOptions) and the numbers each accepts: `graphgpt train` checks its
arguments against OPTION_RANGES before anything runs, and train() checks options made in Python the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..passes.backends import BACKENDS
from .checkpoint import CONFIG_LIMITS
from .corpus import DataError


@dataclass
class TrainOptions:
    data: Optional[str] = None
    steps: int = 3000
    batch: int = 16
    seq_len: int = 64
    embed: int = 64
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3             # the peak learning rate, reached after the warmup
    warmup: int = 100            # steps of linear warmup (nanoGPT's warmup_iters)
    lr_min: Optional[float] = None  # the cosine decay's end at the last step; None: a tenth of lr
    weight_decay: float = 0.01
    clip: Optional[float] = 1.0  # global gradient-norm clip (nanoGPT's grad_clip); None or 0: no clipping
    seed: int = 0
    eval_every: int = 500
    eval_batches: int = 8
    checkpoint_dir: str = "checkpoints"
    checkpoint_every: int = 500
    resume: bool = False
    sample_chars: int = 200
    num_samples: int = 2
    prompt: Optional[str] = None       # None: a line of the held-out text
    prompt_file: Optional[str] = None  # one prompt per non-empty line
    best: bool = False                 # also keep best.npz, the checkpoint of the lowest validation loss
    progress: bool = True
    backend: Optional[str] = None      # what computes the step: "numpy" or "numba"; None: the fastest installed


@dataclass(frozen=True)
class NumberRange:
    """The numbers an option accepts: whole numbers (`kind` int) or finite floats, from `low` (excluded when
    `above_low`: a learning rate must be more than 0) to `high`; and None when `none_means` says what it means."""

    kind: type
    low: float
    high: float = math.inf
    above_low: bool = False
    none_means: Optional[str] = None

    def accepts(self, value) -> bool:
        if value is None:
            return self.none_means is not None
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.low if self.above_low else value >= self.low) and value <= self.high

    def describe(self) -> str:
        """'a whole number from 1 to 256', 'a finite number above 0', ..."""
        what = "a whole number" if self.kind is int else "a finite number"
        low, high = (f"{bound:g}" if self.kind is float or bound == math.inf else str(int(bound))
                     for bound in (self.low, self.high))
        lowest = f"above {low}" if self.above_low else f"of at least {low}"
        if self.high == math.inf:
            described = f"{what} {lowest}"
        else:
            described = f"{what} {lowest} and at most {high}" if self.above_low else f"{what} from {low} to {high}"
        return described if self.none_means is None else f"{described}, or None ({self.none_means})"


def _model_limit(name: str) -> NumberRange:
    """A model size as far as a checkpoint may hold it (checkpoint.CONFIG_LIMITS): a run that trained a larger
    model could not save it in a form that loads again."""
    low, high = CONFIG_LIMITS[name]
    return NumberRange(int, low, high)


# What every numeric option accepts; `graphgpt train` checks its arguments against these before anything runs,
# and train() checks TrainOptions made in Python the same way.
OPTION_RANGES: dict[str, NumberRange] = {
    "steps": NumberRange(int, 1), "batch": NumberRange(int, 1), "seq_len": _model_limit("max_seq_len"),
    "embed": _model_limit("embed_dim"), "layers": _model_limit("num_layers"), "heads": _model_limit("num_heads"),
    "lr": NumberRange(float, 0, above_low=True), "warmup": NumberRange(int, 0),
    "lr_min": NumberRange(float, 0, none_means="a tenth of --lr"), "weight_decay": NumberRange(float, 0),
    "clip": NumberRange(float, 0, none_means="no clipping"), "seed": NumberRange(int, 0, 2**32 - 1),
    "eval_every": NumberRange(int, 1), "eval_batches": NumberRange(int, 1), "checkpoint_every": NumberRange(int, 1),
    "sample_chars": NumberRange(int, 0), "num_samples": NumberRange(int, 0),
}
# Flags whose name is not the field's: --clip-grad-norm sets `clip` (the name checkpoints record).
FLAGS = {"clip": "--clip-grad-norm"}
VOCABULARY_RANGE = _model_limit("vocab_size")


def option_flag(name: str) -> str:
    """The command-line flag of a TrainOptions field: seq_len -> --seq-len, clip -> --clip-grad-norm."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def validate_options(options: TrainOptions) -> None:
    """DataError naming the first option out of its range (or --embed not divisible by --heads, or a decay that
    would end above the peak)."""
    for name, accepted in OPTION_RANGES.items():
        value = getattr(options, name)
        if not accepted.accepts(value):
            raise DataError(f"{option_flag(name)} must be {accepted.describe()}, got {value!r}")
    if options.embed % options.heads:
        raise DataError(f"--embed ({options.embed}) must be divisible by --heads ({options.heads})")
    if options.lr_min is not None and options.lr_min > options.lr:
        raise DataError(f"--lr-min ({options.lr_min}) must not exceed --lr ({options.lr}): the cosine decays from "
                        f"--lr down to --lr-min")
    for name in ("prompt", "prompt_file"):
        if getattr(options, name) is not None and not (isinstance(getattr(options, name), str) and
                                                       getattr(options, name)):
            raise DataError(f"{option_flag(name)} must be non-empty text, got {getattr(options, name)!r:.40}")
    if options.backend is not None and options.backend not in BACKENDS:
        raise DataError(f"--backend must be one of {', '.join(BACKENDS)}, got {options.backend!r:.40}")
    if options.prompt is not None and options.prompt_file is not None:
        raise DataError("--prompt and --prompt-file both give the samples' prompts: give one of them")
