"""The training loop of `graphgpt train`: one compiled graph per step (forward, generated backward, AdamW update),
periodic validation through a compiled loss graph, atomic checkpoints, resume, and a final report against the
unigram baseline.

A resumed run continues with the checkpoint's weights, optimizer state, step and batch sampler state, so it
draws the same batches and produces the same losses as a run that was never interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, TextIO

import numpy as np

from .. import compile as compile_graph
from .. import manual_seed
from ..nn import GPT, Module
from ..nn import functional as F
from ..optim import AdamW
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .corpus import BatchSampler, DataError, Vocabulary, read_text, split, unigram_cross_entropy
from .sampling import sample

LATEST = "latest.npz"


@dataclass
class TrainOptions:
    data: Optional[str] = None
    steps: int = 3000
    batch: int = 16
    seq_len: int = 64
    embed: int = 64
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 500
    eval_batches: int = 8
    checkpoint_dir: str = "checkpoints"
    checkpoint_every: int = 500
    resume: bool = False
    sample_chars: int = 200
    progress: bool = True


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss of each step run in this invocation
    first_step: int = 0
    validation_loss: float = float("nan")
    unigram_loss: float = float("nan")
    tokens_per_second: float = 0.0
    samples: list[str] = field(default_factory=list)


class LossOf(Module):
    """The model and its loss as one module, so a compiled loss graph reads the model's live parameters."""

    def __init__(self, model: Module):
        self.model = model

    def forward(self, tokens, targets):
        return F.cross_entropy(self.model(tokens), targets)


def _validate(options: TrainOptions) -> None:
    for name in ("steps", "batch", "seq_len", "embed", "layers", "heads", "eval_every", "eval_batches",
                 "checkpoint_every"):
        if getattr(options, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    if options.embed % options.heads:
        raise DataError(f"--embed ({options.embed}) must be divisible by --heads ({options.heads})")
    if options.lr <= 0:
        raise DataError(f"--lr must be positive, got {options.lr}")


# What a resumed run takes from its checkpoint, whatever the command line says: the model's shape and the
# optimizer's settings (changing them mid-run would silently make a different run).
RESUMED_SETTINGS = ("embed", "layers", "heads", "lr", "weight_decay", "clip", "seed")


def _resumed_options(options: TrainOptions, saved: dict, out: TextIO) -> TrainOptions:
    changed = {name: saved[name] for name in RESUMED_SETTINGS
               if name in saved and saved[name] != getattr(options, name)}
    if changed:
        out.write("resuming with the checkpoint's " + ", ".join(
            f"--{name.replace('_', '-')} {value} (not {getattr(options, name)})" for name, value in changed.items())
            + "\n")
    return replace(options, **changed)


def _sample_prompt(text: str, length: int = 16) -> str:
    """A prompt from held-out text that starts at a line (a fresh statement), not mid-word."""
    start = text.find("\n") + 1
    prompt = text[start:start + length]
    return prompt if len(prompt) == length else text[:length]


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".graphgpt-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise DataError(f"cannot write checkpoints to --checkpoint-dir {folder}: {error.strerror}") from None


class Progress:
    """One line rewritten in place on a terminal; a line every tenth of the run otherwise (logs, CI)."""

    def __init__(self, total: int, out: TextIO, enabled: bool):
        self.total, self.out, self.enabled = total, out, enabled
        self.live = enabled and out.isatty()
        self.started = time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_second: float) -> None:
        if not self.enabled:
            return
        done = step / self.total
        bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
        elapsed = time.perf_counter() - self.started
        line = (f"[{bar}] step {step}/{self.total}  loss {loss:.3f}  {tokens_per_second / 1000:.1f}k tok/s  "
                f"{elapsed:.0f}s")
        if self.live:
            self.out.write("\r" + line)
            self.out.flush()
        elif step == self.total or step % max(1, self.total // 10) == 0:
            self.out.write(line + "\n")

    def finish(self) -> None:
        if self.live:
            self.out.write("\n")


def train(options: TrainOptions, out: Optional[TextIO] = None) -> TrainResult:
    """Train as `options` say, writing progress and the report to `out` (standard output by default)."""
    out = sys.stdout if out is None else out
    _validate(options)
    path = os.path.join(options.checkpoint_dir, LATEST)
    _check_writable(options.checkpoint_dir)  # fail now, not at the first checkpoint after minutes of training
    text = read_text(options.data)
    checkpoint = load_checkpoint(path) if options.resume else None
    if checkpoint is not None:
        vocabulary = Vocabulary(checkpoint.metadata["vocabulary"])
        saved = checkpoint.metadata["options"]
        if (saved.get("batch"), saved.get("seq_len")) != (options.batch, options.seq_len):
            raise CheckpointError(f"checkpoint {path} was trained with batch {saved.get('batch')} and seq-len "
                                  f"{saved.get('seq_len')}; resume with the same values")
        options = _resumed_options(options, saved, out)
    else:
        vocabulary = Vocabulary.of(text)
    tokens = vocabulary.encode(text, what=f"--data {options.data}" if options.data else "the corpus")
    train_tokens, validation_tokens = split(tokens)
    for part, part_tokens in (("training", train_tokens), ("validation", validation_tokens)):
        if len(part_tokens) <= options.seq_len + 1:
            raise DataError(f"the {part} part of the text has {len(part_tokens)} characters; windows of "
                            f"--seq-len {options.seq_len} need more than {options.seq_len + 1} (the last 10% of "
                            f"the text is held out for validation): give more text or a shorter --seq-len")
    sampler = BatchSampler(train_tokens, options.batch, options.seq_len, options.seed)

    manual_seed(options.seed)
    config = dict(vocab_size=len(vocabulary), embed_dim=options.embed, num_layers=options.layers,
                  num_heads=options.heads, max_seq_len=options.seq_len)
    if checkpoint is not None:
        config = checkpoint.metadata["config"]
    model = GPT(**config)
    optimizer = AdamW(lr=options.lr, weight_decay=options.weight_decay, clip_grad_norm=options.clip)
    example = np.zeros((options.batch, options.seq_len), np.int64)  # compiling needs only shapes and dtypes
    step = compile_graph(model, example, example, loss=F.cross_entropy, optimizer=optimizer)
    evaluate = compile_graph(LossOf(model), example, example)
    first_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict({"type": checkpoint.metadata["optimizer"]["type"],
                                   "state": checkpoint.optimizer_state})
        sampler.state = checkpoint.metadata["sampler_state"]
        first_step = checkpoint.metadata["step"]

    validation_sampler = BatchSampler(validation_tokens, options.batch, options.seq_len, seed=12345)
    validation_batches = [validation_sampler.next() for _ in range(options.eval_batches)]

    def validation_loss() -> float:
        return float(np.mean([evaluate.run(x, y) for x, y in validation_batches]))

    def write_checkpoint(completed: int) -> None:
        metadata = {"config": config, "vocabulary": vocabulary.characters, "step": completed,
                    "optimizer": {"type": type(optimizer).__name__, "hyperparameters": optimizer.hyperparameters},
                    "sampler_state": sampler.state, "options": asdict(options)}
        save_checkpoint(path, model.state_dict(), optimizer.state_dict()["state"], metadata)

    result = TrainResult(first_step=first_step)
    result.unigram_loss = unigram_cross_entropy(train_tokens, validation_tokens, len(vocabulary))
    out.write(f"training a {config['num_layers']}-layer GPT ({model.num_parameters():,} parameters, vocabulary "
              f"{len(vocabulary)}) on {len(train_tokens):,} characters; steps {first_step + 1}..{options.steps}\n")
    progress = Progress(options.steps, out, options.progress)
    started = time.perf_counter()
    for completed in range(first_step + 1, options.steps + 1):
        inputs, targets = sampler.next()
        result.losses.append(float(step.run(inputs, targets)))
        result.tokens_per_second = options.batch * options.seq_len * len(result.losses) / (
            time.perf_counter() - started)
        progress.update(completed, result.losses[-1], result.tokens_per_second)
        if completed % options.eval_every == 0 and completed != options.steps:
            progress.finish()
            out.write(f"step {completed}: validation loss {validation_loss():.4f}\n")
        if completed % options.checkpoint_every == 0 or completed == options.steps:
            write_checkpoint(completed)
    progress.finish()
    result.validation_loss = validation_loss()
    out.write(f"final validation loss {result.validation_loss:.4f} nats/char; unigram (character frequency) "
              f"baseline {result.unigram_loss:.4f}\n")
    prompt = _sample_prompt(vocabulary.decode(validation_tokens[:200]))
    for seed in range(2 if options.sample_chars else 0):
        result.samples.append(sample(model, vocabulary, prompt, options.sample_chars, temperature=0.8, top_k=10,
                                     seed=seed))
        out.write(f"--- sample {seed + 1} ---\n{result.samples[-1]}\n")
    out.write(f"checkpoint: {path}\n")
    return result
