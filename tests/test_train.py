"""`graphgpt train` and `graphgpt generate` end to end, beyond tests/test_training.py: resuming through several
interruptions (one of them at a step that is not a checkpoint multiple), refusing a resume with other batch
shapes, the printed unigram baseline against an independent count,
and every user error reaching the terminal as `graphgpt: error: ...` with no traceback."""

import importlib.util
import io
import math
import os
import re
import signal
import warnings
from collections import Counter

import numpy as np
import pytest

from graphgpt.cli import main
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint
from graphgpt.training.corpus import DataError
from graphgpt.training.trainer import LATEST, TrainOptions, train

WORDS = "static graphs are traced once and run many times over numpy buffers".split()
# Varied enough that a model beats character frequencies; the final "~" occurs only in the held-out tail, so the
# baseline must smooth a character it never saw in training.
TEXT = "".join(f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} {i % 10};\n" for i in range(400)) + "~"
TINY_MODEL = ["--batch", "4", "--seq-len", "16", "--embed", "16", "--layers", "1", "--heads", "2", "--lr", "1e-2"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def tiny_options(data_file, folder, **overrides) -> TrainOptions:
    options = dict(data=data_file, steps=14, batch=4, seq_len=16, embed=16, layers=1, heads=2, lr=1e-2,
                   eval_every=4, eval_batches=2, checkpoint_dir=str(folder), checkpoint_every=4, sample_chars=0,
                   progress=False)
    options.update(overrides)
    return TrainOptions(**options)


def run_quietly(options: TrainOptions):
    out = io.StringIO()
    return train(options, out=out), out.getvalue()


def test_resuming_twice_repeats_the_uninterrupted_run(data_file, tmp_path):
    uninterrupted, uninterrupted_log = run_quietly(tiny_options(data_file, tmp_path / "whole"))
    pieces = []
    for stop in (6, 9, 14):  # 6 and 9 are not multiples of checkpoint_every: the end-of-run checkpoint resumes
        pieces.append(run_quietly(tiny_options(data_file, tmp_path / "pieces", steps=stop, resume=stop != 6)))
    assert [result.first_step for result, _ in pieces] == [0, 6, 9]
    assert [loss for result, _ in pieces for loss in result.losses] == uninterrupted.losses
    assert pieces[-1][0].validation_loss == uninterrupted.validation_loss
    # Periodic validation losses printed after the last interruption match the uninterrupted run's.
    assert re.findall(r"step 12: validation loss \S+", pieces[-1][1]) == \
        re.findall(r"step 12: validation loss \S+", uninterrupted_log)
    whole, resumed = (load_checkpoint(str(tmp_path / folder / LATEST)) for folder in ("whole", "pieces"))
    assert resumed.metadata["step"] == 14 and resumed.metadata["sampler_state"] == whole.metadata["sampler_state"]
    for saved, other in ((whole.model_state, resumed.model_state), (whole.optimizer_state, resumed.optimizer_state)):
        assert saved.keys() == other.keys()
        for name, value in saved.items():
            assert value.dtype == other[name].dtype and value.tobytes() == other[name].tobytes(), name


@pytest.mark.parametrize("changed", [{"batch": 3}, {"seq_len": 8}])
def test_resume_with_other_batch_shapes_is_refused_and_nothing_lost(data_file, tmp_path, changed):
    run_quietly(tiny_options(data_file, tmp_path, steps=4))
    before = (tmp_path / LATEST).read_bytes()
    with pytest.raises(CheckpointError, match="trained with batch 4 and seq-len 16; resume with the same values"):
        run_quietly(tiny_options(data_file, tmp_path, resume=True, **changed))
    assert (tmp_path / LATEST).read_bytes() == before


def unigram_by_counting(text: str) -> float:
    """Add-one smoothed character frequencies of the first 90% of `text`, as nats per character of the rest."""
    cut = int(len(text) * 0.9)
    counts, vocabulary = Counter(text[:cut]), set(text)
    total = cut + len(vocabulary)
    return -sum(math.log((counts[c] + 1) / total) for c in text[cut:]) / (len(text) - cut)


def test_cli_train_reports_validation_below_an_independently_counted_baseline(data_file, tmp_path, capsys):
    assert main(["train", "--data", data_file, "--steps", "40", *TINY_MODEL, "--eval-every", "20",
                 "--eval-batches", "2", "--checkpoint-dir", str(tmp_path), "--sample-chars", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[" not in out.split("\n")[1]  # --quiet: no progress bar line after the header
    found = re.search(r"final validation loss (\S+) nats/char; unigram \(character frequency\) baseline (\S+)", out)
    validation, baseline = float(found.group(1)), float(found.group(2))
    assert baseline == pytest.approx(unigram_by_counting(TEXT), abs=6e-5)  # printed to 4 decimals
    assert validation < baseline - 0.5
    assert out.count("--- sample") == 2 and load_checkpoint(str(tmp_path / LATEST)).metadata["step"] == 40


def test_cli_generate_is_repeatable_with_a_seed(data_file, tmp_path, capsys):
    assert main(["train", "--data", data_file, "--steps", "10", *TINY_MODEL, "--checkpoint-dir", str(tmp_path),
                 "--sample-chars", "0", "--quiet"]) == 0
    capsys.readouterr()
    outputs = []
    numba = [["--backend", "numba"]] if importlib.util.find_spec("numba") else []
    for cache in ([], [], ["--no-cache"], *numba):  # the compiled KV-cache decoder twice, the eager path, kernels
        assert main(["generate", "--checkpoint", str(tmp_path / LATEST), "--prompt", "static ", "--length", "40",
                     "--top-k", "0", "--temperature", "1.5", "--seed", "5", *cache]) == 0
        outputs.append(capsys.readouterr().out)
    header = "--- sample 1 of 1, prompt 'static ' ---\n"
    assert all(output == outputs[0] for output in outputs) and outputs[0].startswith(header + "static ")
    assert len(outputs[0]) == len(header + "static ") + 41


def test_cli_generate_past_the_context_slides_the_window_with_notes(data_file, tmp_path, capsys):
    """A prompt longer than max_seq_len (16 here) is continued from its last 16 characters, and generating past
    it recomputes the window each token: both said on stderr, and the text equals the eager path's."""
    assert main(["train", "--data", data_file, "--steps", "4", *TINY_MODEL, "--checkpoint-dir", str(tmp_path),
                 "--sample-chars", "0", "--quiet"]) == 0
    capsys.readouterr()
    captured = []
    for cache in ([], ["--no-cache"]):
        assert main(["generate", "--checkpoint", str(tmp_path / LATEST), "--prompt", "static " * 3, "--length",
                     "12", "--seed", "2", *cache]) == 0
        captured.append(capsys.readouterr())
    assert captured[0].out == captured[1].out and ("static " * 3) in captured[0].out
    assert "has 21 tokens, more than the model's max_seq_len 16: generation conditions on its last 16" in \
        captured[0].err
    assert "each further token recomputes the window of the last 16 tokens" in captured[0].err


def refused(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("graphgpt: error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_cli_user_errors_are_one_line_messages(data_file, tmp_path, capsys):
    folder = str(tmp_path / "run")
    checkpoint = tmp_path / "run" / LATEST
    refused(["train", "--resume", "--checkpoint-dir", folder], capsys, "latest.npz: no such file")
    # Each run names its own folder: the default ./checkpoints may hold the README's training run.
    refused(["train", "--data", str(tmp_path / "absent.txt"), "--checkpoint-dir", folder], capsys,
            "cannot read --data .*absent.txt")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    refused(["train", "--data", data_file, "--steps", "2", *TINY_MODEL, "--checkpoint-dir", str(blocked / "sub"),
             "--sample-chars", "0", "--quiet"], capsys, "a-file")

    assert main(["train", "--data", data_file, "--steps", "3", *TINY_MODEL, "--checkpoint-dir", folder,
                 "--sample-chars", "0", "--quiet"]) == 0
    before = checkpoint.read_bytes()
    foreign = tmp_path / "foreign.txt"
    foreign.write_text(TEXT + "QZ€", encoding="utf-8")
    refused(["train", "--data", str(foreign), "--resume", "--steps", "6", *TINY_MODEL, "--checkpoint-dir", folder],
            capsys, r"3 character\(s\) outside the vocabulary of 33: 'Q', 'Z', '€'")
    assert checkpoint.read_bytes() == before
    refused(["generate", "--checkpoint", str(checkpoint), "--prompt", "static @#"], capsys,
            r"prompt has 2 character\(s\) outside the vocabulary.*'#', '@'")
    refused(["generate", "--checkpoint", data_file, "--prompt", "s"], capsys, "unreadable")


# ---- nothing silently wrong, no work lost (issue 12, items 11-13) ------------------------------------------------

def checkpoint_bytes(folder) -> bytes:
    return (folder / LATEST).read_bytes()


def test_resume_with_steps_not_beyond_the_checkpoint_is_refused_and_nothing_lost(data_file, tmp_path, capsys):
    run_quietly(tiny_options(data_file, tmp_path, steps=6))
    before = checkpoint_bytes(tmp_path)
    for steps in (4, 6):  # once printed `steps 7..4` and carried on
        with pytest.raises(DataError, match=f"--steps {steps} does not go beyond the step 6 of checkpoint "
                                            f".*latest.npz: give --steps more than 6 to continue training"):
            run_quietly(tiny_options(data_file, tmp_path, steps=steps, resume=True))
    refused(["train", "--data", data_file, "--steps", "5", *TINY_MODEL, "--checkpoint-dir", str(tmp_path),
             "--resume", "--quiet"], capsys, "--steps 5 does not go beyond the step 6")
    assert checkpoint_bytes(tmp_path) == before


def test_a_fresh_run_refuses_to_overwrite_a_checkpoint(data_file, tmp_path):
    run_quietly(tiny_options(data_file, tmp_path, steps=4))
    before = checkpoint_bytes(tmp_path)
    with pytest.raises(DataError, match="latest.npz already holds a checkpoint, which this run would overwrite: "
                                        "--resume continues it"):
        run_quietly(tiny_options(data_file, tmp_path, steps=8))
    assert checkpoint_bytes(tmp_path) == before


@pytest.mark.parametrize("failure,message", [
    ("text too short", "the validation part of the text has"),
    ("no such data", "cannot read --data"),
    ("resume without a checkpoint", "no such file"),
])
def test_a_refused_run_leaves_no_checkpoint_folder_behind(data_file, tmp_path, failure, message):
    folder = tmp_path / "new" / "run"
    options = tiny_options(data_file, folder)
    if failure == "text too short":
        (tmp_path / "short.txt").write_text("abcdefghij" * 12, encoding="utf-8")
        options = tiny_options(str(tmp_path / "short.txt"), folder)
    elif failure == "no such data":
        options = tiny_options(str(tmp_path / "absent.txt"), folder)
    else:
        options = tiny_options(data_file, folder, resume=True)
    with pytest.raises(ValueError, match=message):
        run_quietly(options)
    assert not (tmp_path / "new").exists()


def test_samples_at_the_end_fit_a_sequence_shorter_than_the_prompt(data_file, tmp_path):
    """The end-of-run prompt was 16 characters whatever --seq-len: a run with --seq-len 8 trained, then failed."""
    result, log = run_quietly(tiny_options(data_file, tmp_path, steps=2, seq_len=8, sample_chars=5))
    assert [len(text) for text in result.samples] == [8 + 5, 8 + 5] and "--- sample 2 of 2, prompt " in log


def diverging_options(data_file, folder, **overrides):
    """A learning rate of 10^4: weights blow up within a few steps, after the step-2 checkpoint."""
    return tiny_options(data_file, folder, steps=14, lr=1e4, checkpoint_every=2, **overrides)


def test_a_diverging_run_stops_names_the_first_nan_node_and_keeps_the_last_good_checkpoint(data_file, tmp_path):
    from graphgpt.training.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged) as diverged:
        run_quietly(diverging_options(data_file, tmp_path))
    message = str(diverged.value)
    step = int(re.match(r"training diverged at step (\d+) \(loss ", message).group(1))
    assert 2 < step < 14 and "\n" not in message
    # The node named is one the NaN-checking rerun of that step found: op, module path and source line.
    assert re.search(r"rerun with NaN checks, node %\d+ \(\w+\) at [\w.]+ \(\S+\.py:\d+\) produced \d+ NaN", message)
    kept = load_checkpoint(str(tmp_path / LATEST))
    assert kept.metadata["step"] == (step - 1) // 2 * 2 and f"of step {kept.metadata['step']} is kept" in message
    assert all(np.isfinite(value).all() for value in (*kept.model_state.values(), *kept.optimizer_state.values()))


def test_a_run_diverging_before_its_first_checkpoint_writes_nothing(data_file, tmp_path, capsys):
    folder = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--data", data_file, "--steps", "14", *TINY_MODEL[:-2], "--lr", "1e5",
                     "--checkpoint-every", "100", "--checkpoint-dir", str(folder), "--sample-chars", "0",
                     "--quiet"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("graphgpt: error: training diverged at step ")
    assert err.rstrip().endswith("no checkpoint was written") and not folder.exists()
    assert [str(warning.message) for warning in caught] == []  # no NumPy overflow warnings before the line


def whole_checkpoints_equal(first, second) -> bool:
    return all(value.tobytes() == second[name].tobytes() for name, value in first.items())


def test_resume_on_another_core_count_repeats_the_split_bit_for_bit(data_file, tmp_path, monkeypatch):
    """Item 13: resumed on 1 core, a run split in two shards on 2 cores used to continue unsplit, summing
    gradients in another order (weights 2.9e-6 apart). The checkpoint records the split; the resumed run
    repeats it."""
    from graphgpt.passes import program_build as program

    monkeypatch.setattr(program, "MIN_SPLIT_FLOPS", 0)  # split the tiny step, as a big step is split
    monkeypatch.setattr(program, "available_cores", lambda: 1)
    one_core, _ = run_quietly(tiny_options(data_file, tmp_path / "one-core", steps=10))
    monkeypatch.setattr(program, "available_cores", lambda: 2)
    two_cores, _ = run_quietly(tiny_options(data_file, tmp_path / "two-cores", steps=10))
    assert (one_core.shards, two_cores.shards) == (1, 2)
    assert one_core.losses != two_cores.losses  # the premise: the split changes the last bits

    run_quietly(tiny_options(data_file, tmp_path / "moved", steps=5))
    assert load_checkpoint(str(tmp_path / "moved" / LATEST)).metadata["shards"] == 2
    monkeypatch.setattr(program, "available_cores", lambda: 1)  # resumed on a 1-core machine
    resumed, log = run_quietly(tiny_options(data_file, tmp_path / "moved", steps=10, resume=True))
    assert "resumed from step 5 of " in log and "last bits" not in log
    assert resumed.shards == 2 and resumed.losses == two_cores.losses[5:]
    whole, moved = (load_checkpoint(str(tmp_path / name / LATEST)) for name in ("two-cores", "moved"))
    assert whole_checkpoints_equal(whole.model_state, moved.model_state)
    assert whole_checkpoints_equal(whole.optimizer_state, moved.optimizer_state)


def test_resuming_a_checkpoint_that_does_not_record_its_split_says_results_may_differ(data_file, tmp_path):
    from graphgpt.training.checkpoint import save_checkpoint

    run_quietly(tiny_options(data_file, tmp_path, steps=4))
    older = load_checkpoint(str(tmp_path / LATEST))  # as written before checkpoints recorded the split
    metadata = {key: value for key, value in older.metadata.items() if key not in ("shards", "format", "version")}
    save_checkpoint(str(tmp_path / LATEST), older.model_state, older.optimizer_state, metadata)
    _, log = run_quietly(tiny_options(data_file, tmp_path, steps=6, resume=True))
    assert "the checkpoint does not record its data-parallel split: if its steps ran another than this " \
           "machine's, results will differ from an uninterrupted run in the last bits" in log


def test_resume_repeats_the_checkpoints_backend_bit_for_bit(data_file, tmp_path, monkeypatch):
    """Generated kernels sum in another order than NumPy's: a run whose steps ran on numba resumes on numba even
    where the default has become numpy, and says so when --backend asks for the other one."""
    pytest.importorskip("numba", reason="generated kernels need numba")
    from graphgpt.passes.backends import BACKEND_VARIABLE

    monkeypatch.delenv(BACKEND_VARIABLE)  # the default where numba is installed: generated kernels
    generated, _ = run_quietly(tiny_options(data_file, tmp_path / "whole", steps=8))
    reference, _ = run_quietly(tiny_options(data_file, tmp_path / "numpy", steps=8, backend="numpy"))
    assert generated.losses != reference.losses  # the premise: the backends differ in the last bits
    np.testing.assert_allclose(generated.losses, reference.losses, rtol=1e-5)
    run_quietly(tiny_options(data_file, tmp_path / "moved", steps=4))
    assert load_checkpoint(str(tmp_path / "moved" / LATEST)).metadata["options"]["backend"] == "numba"
    monkeypatch.setenv(BACKEND_VARIABLE, "numpy")  # resumed where the default is numpy
    resumed, log = run_quietly(tiny_options(data_file, tmp_path / "moved", steps=6, resume=True))
    assert "last bits" not in log and resumed.losses == generated.losses[4:6]
    switched, log = run_quietly(tiny_options(data_file, tmp_path / "moved", steps=8, resume=True, backend="numpy"))
    assert "--backend numpy computes the steps, the checkpoint's ran on numba: results will differ from an " \
           "uninterrupted run in the last bits" in log
    assert load_checkpoint(str(tmp_path / "moved" / LATEST)).metadata["options"]["backend"] == "numpy"


def test_the_first_run_on_a_machine_says_its_first_step_compiles_kernels(data_file, tmp_path, monkeypatch):
    """Compiling the generated kernels makes a first step on a fresh machine take seconds: said before it, and
    only when there is something to compile (a second run loads them from the disk cache)."""
    pytest.importorskip("numba", reason="generated kernels need numba")
    from graphgpt.passes.numba_backend import engine

    monkeypatch.setenv(engine.CACHE_FOLDER_VARIABLE, str(tmp_path / "kernels"))  # a machine that compiled none yet
    monkeypatch.setattr(engine, "_imported", {})  # and a fresh process (other tests here imported the same kernels)
    _, first = run_quietly(tiny_options(data_file, tmp_path / "first", steps=2, backend="numba"))
    said = re.search(r"(\d+) generated kernels are new on this machine: the first step compiles them \(once: "
                     r"they are kept in (.+)\)", first)
    assert said and int(said.group(1)) > 0 and said.group(2) == str(tmp_path / "kernels")
    _, second = run_quietly(tiny_options(data_file, tmp_path / "second", steps=2, backend="numba"))
    assert "generated kernels are new" not in second
    _, reference = run_quietly(tiny_options(data_file, tmp_path / "numpy", steps=2, backend="numpy"))
    assert "generated kernels" not in reference


def test_a_checkpoint_naming_an_unknown_backend_is_refused(data_file, tmp_path):
    from graphgpt.training.checkpoint import save_checkpoint

    run_quietly(tiny_options(data_file, tmp_path, steps=4))
    saved = load_checkpoint(str(tmp_path / LATEST))
    metadata = {key: value for key, value in saved.metadata.items() if key not in ("format", "version")}
    metadata["options"] = dict(metadata["options"], backend="cuda")
    save_checkpoint(str(tmp_path / LATEST), saved.model_state, saved.optimizer_state, metadata)
    with pytest.raises(CheckpointError, match="option backend must be one of numpy, numba, got 'cuda'"):
        run_quietly(tiny_options(data_file, tmp_path, steps=6, resume=True))


class SignalledStep:
    """A compiled training step that, after running its `at`-th step, receives `signals` as from Ctrl-C or
    `kill`: the first while that step is still under way, the others (if any) in quick succession."""

    def __init__(self, compiled, at: int, signals):
        self.compiled, self.at, self.signals, self.runs = compiled, at, signals, 0

    def run(self, *inputs):
        loss = self.compiled.run(*inputs)
        self.runs += 1
        if self.runs == self.at:
            for number in self.signals:
                os.kill(os.getpid(), number)
        return loss

    def __getattr__(self, name):
        return getattr(self.compiled, name)


@pytest.fixture
def signal_at(monkeypatch):
    """signal_at(step, [signals]): the training step compiled next receives those signals at that step."""
    from graphgpt.training import trainer

    def arrange(at: int, signals):
        compile_step = trainer._compile_step

        def signalled(*arguments, **keywords):
            return SignalledStep(compile_step(*arguments, **keywords), at, signals)

        monkeypatch.setattr(trainer, "_compile_step", signalled)
    return arrange


@pytest.mark.parametrize("signals,saved", [([signal.SIGINT], 7), ([signal.SIGTERM], 7),
                                           ([signal.SIGINT, signal.SIGINT], 6)],
                         ids=["SIGINT finishes the step", "SIGTERM finishes the step",
                              "a second SIGINT abandons the step"])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_loses_nothing(data_file, tmp_path, signal_at, signals,
                                                                       saved, monkeypatch):
    """Item 12: Ctrl-C lost everything since the last checkpoint (every 4 steps here). Now the step under way
    is finished and saved (or, on a second signal, abandoned: the state from before it is saved), and resuming
    repeats the uninterrupted run exactly."""
    uninterrupted, _ = run_quietly(tiny_options(data_file, tmp_path / "whole"))
    signal_at(7, signals)
    # what the process had (Python's Ctrl-C handler; SIG_IGN when started in a shell's background)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopped, log = run_quietly(tiny_options(data_file, tmp_path / "run"))
    monkeypatch.undo()
    name = signal.Signals(signals[0]).name
    assert stopped.stopped_by == name and stopped.checkpoint_step == saved
    assert f"stopped by {name} after step {saved}: checkpoint {tmp_path / 'run' / LATEST} holds step {saved}" in log
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    assert load_checkpoint(str(tmp_path / "run" / LATEST)).metadata["step"] == saved
    resumed, log = run_quietly(tiny_options(data_file, tmp_path / "run", resume=True))
    assert f"resumed from step {saved} of " in log
    assert stopped.losses[:saved] + resumed.losses == uninterrupted.losses
    whole, pieces = (load_checkpoint(str(tmp_path / name / LATEST)) for name in ("whole", "run"))
    assert whole_checkpoints_equal(whole.model_state, pieces.model_state)
    assert whole_checkpoints_equal(whole.optimizer_state, pieces.optimizer_state)


def test_cli_stopped_by_a_signal_says_how_to_resume(data_file, tmp_path, signal_at, capsys):
    folder = str(tmp_path / "run")
    arguments = ["train", "--data", data_file, "--steps", "12", *TINY_MODEL, "--checkpoint-dir", folder,
                 "--sample-chars", "0", "--quiet"]
    signal_at(5, [signal.SIGTERM])
    assert main(arguments) == 128 + signal.SIGTERM
    captured = capsys.readouterr()
    assert f"stopped by SIGTERM after step 5: checkpoint {folder}/{LATEST} holds step 5" in captured.out
    assert captured.err == (f"graphgpt: `graphgpt train --resume --data {data_file} --steps 12 --batch 4 "
                            f"--seq-len 16 --checkpoint-dir {folder} --sample-chars 0` continues from step 5\n")


def test_interrupting_anything_but_a_resumable_training_run_gives_no_resume_advice(data_file, tmp_path, capsys,
                                                                                    monkeypatch):
    """`graphgpt train --resume` was advised after Ctrl-C in generate or compare, and before any checkpoint."""
    from graphgpt import cli
    from graphgpt.training import trainer

    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    for command in ("command_generate", "command_compare"):
        monkeypatch.setattr(cli, command, interrupted)
    assert main(["generate", "--prompt", "x"]) == 130
    assert main(["compare", "--out", str(tmp_path / "c.html")]) == 130
    assert capsys.readouterr().err == "\ngraphgpt: interrupted\n" * 2

    folder = tmp_path / "run"
    arguments = ["train", "--data", data_file, "--steps", "12", *TINY_MODEL, "--checkpoint-dir", str(folder),
                 "--sample-chars", "0", "--quiet"]
    with monkeypatch.context() as reading:
        reading.setattr(trainer, "read_text", interrupted)  # Ctrl-C while reading the text: nothing saved yet
        assert main(arguments) == 130
    assert capsys.readouterr().err == "\ngraphgpt: interrupted before training began; nothing was saved\n"
    assert not folder.exists()

    assert main(arguments[:4] + ["6"] + arguments[5:]) == 0  # a finished run: its last checkpoint is step 6
    capsys.readouterr()
    with monkeypatch.context() as reading:
        reading.setattr(trainer, "read_text", interrupted)
        assert main(arguments + ["--resume"]) == 130
    assert "`graphgpt train --resume --data" in capsys.readouterr().err  # now a checkpoint exists

    monkeypatch.setattr(trainer, "sample_text", lambda *arguments, **keywords: os.kill(os.getpid(), signal.SIGINT))
    assert main(arguments[:-3] + ["--sample-chars", "3", "--quiet", "--resume"]) == 130  # Ctrl-C while sampling
    captured = capsys.readouterr()
    assert f"stopped by SIGINT after step 12: checkpoint {folder}/{LATEST} holds step 12" in captured.out
    assert captured.err == ""  # all 12 steps are done and saved: nothing to resume
