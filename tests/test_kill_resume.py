"""A training process killed at any moment (during a checkpoint write too) resumes from the last good checkpoint
with nothing lost or corrupted: killed and resumed runs end with exactly the weights of an uninterrupted run. One
stopped by SIGINT (Ctrl-C) or SIGTERM saves the step it was in, says so, and exits with 128 + the signal."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from graphgpt.training.checkpoint import load_checkpoint
from graphgpt.training.trainer import LATEST, TrainOptions, train

TEXT = "a static graph is traced once and run many times; a dynamic tape is built anew each step. " * 60
STEPS = 30
SETTINGS = dict(steps=STEPS, batch=4, seq_len=32, embed=64, layers=2, heads=4, lr=1e-2, eval_every=1000,
                eval_batches=1, checkpoint_every=1, sample_chars=0)


def command(data, folder, resume, settings=SETTINGS):
    arguments = [sys.executable, "-m", "graphgpt", "train", "--data", data, "--checkpoint-dir", folder,
                 "--no-progress"]
    for name, value in settings.items():
        arguments += ["--" + name.replace("_", "-"), str(value)]
    return arguments + (["--resume"] if resume else [])


def run_until_done(data, folder):
    """Resume (or start) until the run completes; every checkpoint met on the way must load."""
    for _ in range(5):
        resume = os.path.exists(os.path.join(folder, LATEST))
        if resume and load_checkpoint(os.path.join(folder, LATEST)).metadata["step"] == STEPS:
            return
        result = subprocess.run(command(data, folder, resume), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    raise AssertionError("the run did not complete")


def kill_when(process, condition, timeout=60.0):
    """SIGKILL the process at a moment the condition holds. Seen from outside, a condition such as "a temporary
    file exists" can stop holding between the look and the kill, so the process is frozen (SIGSTOP) first, the
    condition looked at again while nothing moves, and the process killed only if it still holds (else thawed)."""
    started = time.monotonic()
    while True:
        if process.poll() is not None or time.monotonic() - started > timeout:
            return False
        if condition():
            process.send_signal(signal.SIGSTOP)
            _, status = os.waitpid(process.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):  # it ended before the signal arrived (and has been reaped here)
                return False
            if condition():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            process.send_signal(signal.SIGCONT)
        time.sleep(0.0005)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    data = folder / "text.txt"
    data.write_text(TEXT)
    options = TrainOptions(data=str(data), checkpoint_dir=str(folder / "run"), progress=False, **SETTINGS)
    train(options, out=open(os.devnull, "w"))
    return str(data), load_checkpoint(str(folder / "run" / LATEST))


def assert_same_weights(folder, reference):
    final = load_checkpoint(os.path.join(folder, LATEST))
    assert final.metadata["step"] == reference.metadata["step"]
    for name, value in reference.model_state.items():
        np.testing.assert_array_equal(final.model_state[name], value, err_msg=name)
    for name, value in reference.optimizer_state.items():
        np.testing.assert_array_equal(final.optimizer_state[name], value, err_msg=name)


@pytest.mark.parametrize("trial", range(3))
def test_killed_at_a_random_step_resumes_to_the_same_weights(reference, tmp_path, trial):
    data, expected = reference
    folder = str(tmp_path / "run")
    process = subprocess.Popen(command(data, folder, resume=False), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    target_step = [5, 13, 22][trial]
    path = os.path.join(folder, LATEST)

    def reached():
        try:
            return load_checkpoint(path).metadata["step"] >= target_step
        except Exception:  # not written yet, or mid-rename: keep polling
            return False

    assert kill_when(process, reached), "the process ended before it could be killed"
    assert load_checkpoint(path).metadata["step"] < STEPS  # it really was interrupted
    run_until_done(data, folder)
    assert_same_weights(folder, expected)


def test_killed_during_a_checkpoint_write_loses_nothing(reference, tmp_path):
    data, expected = reference
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    process = subprocess.Popen(command(data, folder, resume=False), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def checkpoint_temporaries():  # the checkpoint's, not the loss log's (written through the same mechanism)
        return [name for name in os.listdir(folder) if name.startswith(f".{LATEST}.") and name.endswith(".tmp")]

    def writing():
        return checkpoint_temporaries() and os.path.exists(os.path.join(folder, LATEST))

    assert kill_when(process, writing), "never caught a checkpoint being written"
    assert checkpoint_temporaries()  # killed mid-write: a partial temp file
    before = load_checkpoint(os.path.join(folder, LATEST))  # the last good checkpoint is intact
    assert before.metadata["step"] < STEPS
    run_until_done(data, folder)
    assert not any(name.endswith(".tmp") for name in os.listdir(folder))  # the stale partial file is gone
    assert_same_weights(folder, expected)


# Small and long enough that the signal, sent once step 3 is validated, arrives well before the run would end.
SIGNALLED = dict(SETTINGS, steps=300, seq_len=16, embed=16, layers=1, heads=2, eval_every=1, checkpoint_every=1000)


@pytest.fixture(scope="module")
def signalled_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signalled")
    data = folder / "text.txt"
    data.write_text(TEXT)
    train(TrainOptions(data=str(data), checkpoint_dir=str(folder / "run"), progress=False, **SIGNALLED),
          out=open(os.devnull, "w"))
    return str(data), load_checkpoint(str(folder / "run" / LATEST))


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_process_saves_its_step_and_resumes_to_the_same_weights(signalled_reference, tmp_path,
                                                                           number):
    data, expected = signalled_reference
    folder = str(tmp_path / "run")
    process = subprocess.Popen(command(data, folder, resume=False, settings=SIGNALLED), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("step 3: validation loss"):
            break
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + number, err
    name = signal.Signals(number).name
    found = re.search(rf"stopped by {name} after step (\d+): checkpoint \S+ holds step (\d+)", out)
    step = int(found.group(1))
    assert 3 <= step < SIGNALLED["steps"] and int(found.group(2)) == step
    assert load_checkpoint(os.path.join(folder, LATEST)).metadata["step"] == step  # saved, though not a multiple
    assert re.fullmatch(rf"graphgpt: `graphgpt train --resume .*` continues from step {step}\n", err)
    resumed = subprocess.run(command(data, folder, resume=True, settings=SIGNALLED), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {step} of " in resumed.stdout
    assert_same_weights(folder, expected)
