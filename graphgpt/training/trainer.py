"""The training loop of `graphgpt train`: one compiled graph per step (forward, generated backward, AdamW update
with global-norm gradient clipping) at a learning rate warmed up and then decayed along a cosine (schedule.py),
periodic training and validation losses through a compiled loss graph, atomic checkpoints (and, with --best, the
one of the lowest validation loss), resume, a loss log and curve (loss_log.py), a progress bar (progress.py), and
a final report against the unigram baseline with samples.

A resumed run continues with the checkpoint's weights, optimizer state, step, batch sampler state and
data-parallel split, so it draws the same batches and produces bit for bit the losses and weights of a run that
was never interrupted (on any number of cores: the split is the checkpoint's, not this machine's default).

Nothing is lost: SIGINT (Ctrl-C) or SIGTERM ends the step under way and saves a checkpoint of it (a second
signal abandons that step and saves the state from before it). A step whose loss, weights or optimizer state
go NaN or infinite stops the run at once: the step is rerun from the state before it with numerics checks, to
name the first node that produced a NaN, and the last checkpoint, which holds finite weights, is left as it is.
"""

from __future__ import annotations

import math
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
from ..generation import compile_generation, sample_text
from ..optim import AdamW
from ..passes.backends import default_backend
from ..passes.numba_backend import cached_kernel_files, kernel_cache_folder, kernel_file_name, numba_available
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .corpus import BatchSampler, DataError, Vocabulary, read_text, split, unigram_cross_entropy
from .interruptions import StopSignals, TrainingState
from .loss_log import LOSS_CURVE, LOSS_LOG, LossLog, write_loss_curve
from .options import TrainOptions, option_flag, validate_options
from .progress import Progress, measure_matmul_peak, step_flops, throughput
from .sampling import checked_prompts, sample_header
from .schedule import default_lr_min, learning_rate

LATEST = "latest.npz"
BEST = "best.npz"
SAMPLE_PROMPT_CHARACTERS = 16


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # training loss of each step run in this invocation
    first_step: int = 0
    validation_loss: float = float("nan")
    unigram_loss: float = float("nan")
    tokens_per_second: float = 0.0
    samples: list[str] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)  # the rate of each step run in this invocation
    best_step: Optional[int] = None          # with --best: the step of best.npz, if this invocation wrote it
    loss_curve: Optional[str] = None         # the SVG drawn from the loss log at the end
    stopped_by: Optional[str] = None         # 'SIGINT' or 'SIGTERM' if a signal ended the run early
    checkpoint_step: Optional[int] = None    # the step of the checkpoint on disk when train() returned
    shards: int = 1                          # the data-parallel split the steps ran with


class TrainingDiverged(RuntimeError):
    """A step's loss, weights or optimizer state went NaN or infinite; the message names the first node that
    produced a NaN and says which checkpoint was kept."""


class LossOf(Module):
    """The model and its loss as one module, so a compiled loss graph reads the model's live parameters."""

    def __init__(self, model: Module):
        self.model = model

    def forward(self, tokens, targets):
        return F.cross_entropy(self.model(tokens), targets)


# What a resumed run takes from its checkpoint, whatever the command line says: the model's shape and the
# optimizer's settings and schedule (changing them mid-run would silently make a different run). A checkpoint
# older than a setting does not hold it: the command line's value is taken.
RESUMED_SETTINGS = ("embed", "layers", "heads", "lr", "warmup", "lr_min", "weight_decay", "clip", "seed")


def _resumed_options(options: TrainOptions, saved: dict, out: TextIO, path: str) -> TrainOptions:
    changed = {name: saved[name] for name in RESUMED_SETTINGS
               if name in saved and saved[name] != getattr(options, name)}
    if changed:
        out.write("resuming with the checkpoint's " + ", ".join(
            f"{option_flag(name)} {value} (not {getattr(options, name)})" for name, value in changed.items())
            + "\n")
    resumed = replace(options, **changed)
    try:  # the checkpoint's own validation checked lr, weight decay and clip; the schedule's settings here
        validate_options(resumed)
    except DataError as error:
        raise CheckpointError(f"checkpoint {path} holds options this run cannot take: {error}") from None
    return resumed


def _existing_checkpoint(options: TrainOptions, path: str):
    """The checkpoint to resume from (validated, and with steps left to run), or None for a fresh run; a fresh
    run refuses to start over a checkpoint it would overwrite."""
    if not options.resume:
        if os.path.lexists(path):
            raise DataError(f"{path} already holds a checkpoint, which this run would overwrite: --resume "
                            f"continues it; to start afresh, choose another --checkpoint-dir or delete the file")
        return None
    checkpoint = load_checkpoint(path)
    saved = checkpoint.metadata["options"]
    if (saved.get("batch"), saved.get("seq_len")) != (options.batch, options.seq_len):
        raise CheckpointError(f"checkpoint {path} was trained with batch {saved.get('batch')} and seq-len "
                              f"{saved.get('seq_len')}; resume with the same values")
    done = checkpoint.metadata["step"]
    if options.steps <= done:
        raise DataError(f"--steps {options.steps} does not go beyond the step {done} of checkpoint {path}: "
                        f"give --steps more than {done} to continue training")
    return checkpoint


def _sample_prompt(text: str, length: int) -> str:
    """A prompt from held-out text that starts at a line (a fresh statement), not mid-word."""
    start = text.find("\n") + 1
    prompt = text[start:start + length]
    return prompt if len(prompt) == length else text[:length]


def _check_writable(folder: str) -> None:
    """Fail now, not at the first checkpoint after minutes of training, if `folder` cannot hold files. Leaves
    nothing behind: folders created to find out are removed again (the first checkpoint creates them)."""
    missing = []
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        missing.append(existing)
        existing = os.path.dirname(existing)
    created = []
    try:
        for path in reversed(missing):
            os.mkdir(path)
            created.append(path)
        probe = os.path.join(folder, f".graphgpt-write-test.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise DataError(f"cannot write checkpoints to --checkpoint-dir {folder}: {error.strerror}") from None
    finally:
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:  # something else put a file there meanwhile: it is not ours to remove
                pass


def _compile_step(model: GPT, optimizer: AdamW, example: np.ndarray, shards: Optional[int], backend: str,
                  check_numerics=False):
    return compile_graph(model, example, example, loss=F.cross_entropy, optimizer=optimizer, shards=shards,
                         check_numerics=check_numerics, backend=backend)


def _choose_backend(options: TrainOptions, checkpoint, out: TextIO) -> str:
    """What computes the steps: when resuming, the checkpoint's backend (generated kernels sum in another order
    than NumPy's, so changing it would change the last bits of every later weight) unless --backend names
    another; else --backend, or the fastest installed. Says in one line when a resumed run cannot repeat it."""
    chosen = options.backend or default_backend()
    if checkpoint is None:
        return chosen
    recorded = checkpoint.metadata["options"].get("backend")
    differs = "results will differ from an uninterrupted run in the last bits"
    if recorded is None:
        out.write(f"the checkpoint does not record its backend: if its steps ran on another than {chosen}, "
                  f"{differs}\n")
    elif options.backend is not None and options.backend != recorded:
        out.write(f"--backend {options.backend} computes the steps, the checkpoint's ran on {recorded}: {differs}\n")
    elif recorded == "numba" and not numba_available():
        out.write(f"the checkpoint's steps ran on numba, which is not installed here: numpy computes them, and "
                  f"{differs}\n")
        return "numpy"
    else:
        return recorded
    return chosen


def _choose_split(checkpoint, compile_step, out: TextIO):
    """The compiled training step: split as the checkpoint's steps were when resuming (on any machine: k shards
    run on k threads whatever the cores), since summing the shards' gradients in another order would change the
    last bits of every later weight; else as compile decides for this machine. Says in one line when a resumed
    run cannot repeat the checkpoint's split."""
    recorded = checkpoint.metadata.get("shards") if checkpoint is not None else None
    if checkpoint is None:
        return compile_step(None)
    if recorded is None:
        out.write("the checkpoint does not record its data-parallel split: if its steps ran another than this "
                  "machine's, results will differ from an uninterrupted run in the last bits\n")
        return compile_step(None)
    try:
        return compile_step(recorded)
    except ValueError as error:  # the proof of the split failed: the whole-batch step is the one left
        out.write(f"cannot split steps into the checkpoint's {recorded} data-parallel shards ({error}); results "
                  f"will differ from an uninterrupted run in the last bits\n")
        return compile_step(None)


def _first_nan_node(compile_step, shards: int, state: TrainingState, inputs, targets) -> Optional[str]:
    """Rerun a diverged step from the state before it (`state` holds it) with NaN checks, and say where the
    first NaN came from. Only NaN is checked for: with infinities checked too, the causal mask's intended -inf
    would be named first. The state before the step is restored afterwards."""
    from ..passes.schedule import NumericalError

    checked = compile_step(shards, check_numerics="nan")
    state.restore()
    try:
        with np.errstate(all="ignore"):
            checked.run(inputs, targets)
    except NumericalError as error:
        return f"rerun with NaN checks, {error}"
    else:
        return None
    finally:
        state.restore()


def train(options: TrainOptions, out: Optional[TextIO] = None) -> TrainResult:
    """Train as `options` say, writing progress and the report to `out` (standard output by default).

    Everything is checked before anything is written: the options, the checkpoint to resume (or that none would
    be overwritten), the checkpoint folder, the text, the prompts. Raises TrainingDiverged if a step goes NaN or
    infinite; a SIGINT or SIGTERM ends the run early with a checkpoint saved (result.stopped_by says which)."""
    out = sys.stdout if out is None else out
    validate_options(options)
    options = replace(options, clip=options.clip or None)  # --clip-grad-norm 0 turns clipping off, as None does
    path = os.path.join(options.checkpoint_dir, LATEST)
    checkpoint = _existing_checkpoint(options, path)
    _check_writable(options.checkpoint_dir)  # fail now, not at the first checkpoint after minutes of training
    text = read_text(options.data)
    if checkpoint is not None:
        vocabulary = Vocabulary(checkpoint.metadata["vocabulary"])
        options = _resumed_options(options, checkpoint.metadata["options"], out, path)
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
        saved_type = checkpoint.metadata["optimizer"]["type"]
        if saved_type != AdamW.__name__:  # training always uses AdamW: another optimizer's state does not fit
            raise CheckpointError(f"checkpoint {path} holds {saved_type} optimizer state; graphgpt train resumes "
                                  f"AdamW runs only")
    prompts = checked_prompts(options.prompt, options.prompt_file, vocabulary) or [
        _sample_prompt(vocabulary.decode(validation_tokens[:200]), min(SAMPLE_PROMPT_CHARACTERS, options.seq_len))]
    model = GPT(**config)
    optimizer = AdamW(lr=options.lr, weight_decay=options.weight_decay, clip_grad_norm=options.clip)
    example = np.zeros((options.batch, options.seq_len), np.int64)  # compiling needs only shapes and dtypes

    options = replace(options, backend=_choose_backend(options, checkpoint, out))  # recorded in checkpoints

    def compile_step(shards: Optional[int], check_numerics=False):
        return _compile_step(model, optimizer, example, shards, options.backend, check_numerics)

    cached = cached_kernel_files()
    step = _choose_split(checkpoint, compile_step, out)
    evaluate = compile_graph(LossOf(model), example, example, backend=options.backend)
    new_kernels = {source for compiled in (step, evaluate) for source in compiled.program.generated_kernels()
                   if kernel_file_name(source) not in cached}
    if new_kernels:  # else the first step pauses with nothing said
        out.write(f"{len(new_kernels)} generated kernels are new on this machine: the first step compiles them "
                  f"(once: they are kept in {kernel_cache_folder()})\n")
    first_step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict({"type": checkpoint.metadata["optimizer"]["type"],
                                   "state": checkpoint.optimizer_state})
        sampler.state = checkpoint.metadata["sampler_state"]
        first_step = checkpoint.metadata["step"]
        out.write(f"resumed from step {first_step} of {path}\n")

    # Fixed batches, drawn by their own generators (the training sampler's draws stay the run's): every
    # evaluation measures the same windows of each part of the text.
    evaluation_batches = {part: [part_sampler.next() for _ in range(options.eval_batches)] for part, part_sampler in (
        ("train", BatchSampler(train_tokens, options.batch, options.seq_len, seed=54321)),
        ("validation", BatchSampler(validation_tokens, options.batch, options.seq_len, seed=12345)))}

    def mean_loss(part: str) -> float:
        with np.errstate(all="ignore"):
            return float(np.mean([evaluate.run(x, y) for x, y in evaluation_batches[part]]))

    result = TrainResult(first_step=first_step, shards=step.split.shards,
                         checkpoint_step=first_step if checkpoint is not None else None)

    def write_checkpoint(completed: int, file_name: str = LATEST) -> None:
        metadata = {"config": config, "vocabulary": vocabulary.characters, "step": completed,
                    "optimizer": {"type": type(optimizer).__name__, "hyperparameters": optimizer.hyperparameters},
                    "sampler_state": sampler.state, "options": asdict(options), "shards": step.split.shards}
        save_checkpoint(os.path.join(options.checkpoint_dir, file_name), model.state_dict(),
                        optimizer.state_dict()["state"], metadata)
        if file_name == LATEST:
            result.checkpoint_step = completed
            log.flush()  # the log on disk holds the steps of the checkpoint beside it

    result.unigram_loss = unigram_cross_entropy(train_tokens, validation_tokens, len(vocabulary))
    log = LossLog(os.path.join(options.checkpoint_dir, LOSS_LOG), first_step if checkpoint else None, out)
    best_loss = log.best_validation_loss()  # so far: a resumed run keeps best.npz unless it does better
    tokens_per_step, flops = options.batch * options.seq_len, step_flops(step)
    peak = measure_matmul_peak() if options.progress else None  # only the progress bar shows the share of it
    lr_min = default_lr_min(options.lr) if options.lr_min is None else options.lr_min
    out.write(f"training a {config['num_layers']}-layer GPT ({model.num_parameters():,} parameters, vocabulary "
              f"{len(vocabulary)}) on {len(train_tokens):,} characters; steps {first_step + 1}..{options.steps}; "
              f"{flops / 1e9:.3g} GFLOP per step" + (f", float32 matmul peak {peak / 1e9:.1f} GFLOP/s" if peak
                                                      else "") + "\n")
    progress = Progress(options.steps, out, options.progress, first_step, tokens_per_step, flops, peak)
    state = TrainingState(model, optimizer)
    stop = StopSignals()
    started = time.perf_counter()
    done = first_step
    with stop.listening():
        for completed in range(first_step + 1, options.steps + 1):
            rate = learning_rate(completed - 1, options.lr, options.warmup, lr_min, options.steps)
            state.take()
            sampler_before = sampler.state
            optimizer.lr_scale = rate / options.lr  # read by the compiled step at this run
            step_started = time.perf_counter()
            inputs, targets = sampler.next()
            try:
                with stop.interruptible(at_signal=2), np.errstate(all="ignore"):  # non-finite: checked below
                    loss = float(step.run(inputs, targets))
            except KeyboardInterrupt:  # a second signal: abandon this step, keep the state from before it
                state.restore()
                sampler.state = sampler_before
                break
            seconds = time.perf_counter() - step_started
            broken = None if math.isfinite(loss) else "the loss"
            broken = broken or state.first_nonfinite()
            if broken is not None:
                progress.finish()
                raise _diverged(completed, loss, broken, compile_step, step.split.shards, state, inputs, targets,
                                result.checkpoint_step, path)
            done = completed
            result.losses.append(loss)
            result.learning_rates.append(rate)
            result.tokens_per_second = tokens_per_step * len(result.losses) / (time.perf_counter() - started)
            progress.update(completed, loss, seconds)
            validation = None
            if completed % options.eval_every == 0 or completed == options.steps:
                validation, training = mean_loss("validation"), mean_loss("train")
                progress.write(f"step {completed}: validation loss {validation:.4f}, train loss {training:.4f}")
                result.validation_loss = validation
                if options.best and validation < best_loss:
                    best_loss, result.best_step = validation, completed
                    write_checkpoint(completed, BEST)
            log.add(completed, loss, validation, rate, seconds, tokens_per_step)
            if completed % options.checkpoint_every == 0 or completed == options.steps:
                write_checkpoint(completed)
            if stop.received:
                break
        progress.finish()
        log.flush()
        result.loss_curve = write_loss_curve(log.path, os.path.join(options.checkpoint_dir, LOSS_CURVE),
                                             title=f"loss of {config['num_layers']}-layer GPT, {options.steps} "
                                                   f"steps")
        if stop.received:
            return _stopped(result, stop.received, done, write_checkpoint, path, out)
        try:
            with stop.interruptible(at_signal=1):  # every step is saved: a signal now just ends the report
                _report(result, model, vocabulary, prompts, options, out)
        except KeyboardInterrupt:
            return _stopped(result, stop.received, done, write_checkpoint, path, out)
    if result.losses:
        out.write(f"steps {first_step + 1}..{done}: " + throughput(
            tokens_per_step, flops, tokens_per_step / result.tokens_per_second, peak) + " on average\n")
    out.write(f"checkpoint: {path}" + (f"; lowest validation loss {best_loss:.4f}: "
                                       f"{os.path.join(options.checkpoint_dir, BEST)}" if options.best else "")
              + f"\nloss log: {log.path}" + (f"; curve: {result.loss_curve}" if result.loss_curve else "") + "\n")
    return result


def _report(result: TrainResult, model: GPT, vocabulary: Vocabulary, prompts: list[str], options: TrainOptions,
            out: TextIO) -> None:
    """The end of a run: its final validation loss against the unigram baseline, then --num-samples samples,
    each under a header naming its prompt (the prompts taken in turn)."""
    out.write(f"final validation loss {result.validation_loss:.4f} nats/char; unigram (character frequency) "
              f"baseline {result.unigram_loss:.4f}\n")
    count = options.num_samples if options.sample_chars else 0
    generation = (compile_generation(model, backend=options.backend)  # KV-cached decoding: graphgpt/generation.py
                  if count else None)
    for seed in range(count):
        prompt = prompts[seed % len(prompts)]
        result.samples.append(sample_text(generation, vocabulary, prompt, options.sample_chars, temperature=0.8,
                                          top_k=10, seed=seed))
        out.write(f"{sample_header(seed + 1, count, prompt)}\n{result.samples[-1]}\n")


def _diverged(completed: int, loss: float, broken: str, compile_step, shards: int, state: TrainingState, inputs,
              targets, checkpoint_step: Optional[int], path: str) -> TrainingDiverged:
    """The error for a step that went non-finite, naming the first NaN node found by rerunning it from the
    state before it (restored, so the model holds the last finite weights)."""
    found = _first_nan_node(compile_step, shards, state, inputs, targets)
    if found is None:
        found = f"no node produced NaN: {broken} overflowed to infinity"
    kept = (f"checkpoint {path} of step {checkpoint_step} is kept" if checkpoint_step is not None
            else "no checkpoint was written")
    what = f"loss {loss}" if broken == "the loss" else f"loss {loss:.4g}, but the update made {broken} non-finite"
    return TrainingDiverged(f"training diverged at step {completed} ({what}); {found}; {kept}")


def _stopped(result: TrainResult, received: str, done: int, write_checkpoint, path: str,
             out: TextIO) -> TrainResult:
    """End a run stopped by a signal: save the last completed step unless it is already saved, and say so."""
    result.stopped_by = received
    if done > 0 and result.checkpoint_step != done:
        write_checkpoint(done)
    if result.checkpoint_step is None:
        out.write(f"stopped by {received} before the first step completed: nothing to save\n")
    else:
        out.write(f"stopped by {received} after step {done}: checkpoint {path} holds step "
                  f"{result.checkpoint_step}\n")
    return result
