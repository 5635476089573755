"""Checkpoint files, beyond tests/test_training.py and tests/test_kill_resume.py: an exact round trip, a write
failing at any point (mid-file, at fsync, at the rename) never leaves a broken latest.npz, an .npz holding a
pickled object is refused without running it, and each kind of wrong metadata or wrong file is refused with a
CheckpointError saying what is wrong."""

import json
import os

import numpy as np
import pytest

import graphgpt
from graphgpt.optim import AdamW
from graphgpt.training import checkpoint as checkpoint_module
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from graphgpt.training.trainer import LATEST
from test_train import TEXT, run_quietly, tiny_options  # the tiny training run and its text, shared

CONFIG = dict(vocab_size=7, embed_dim=8, num_layers=1, num_heads=2, max_seq_len=6)


def saved_state():
    """Model weights, AdamW state after one eager step, a drawn-from sampler state, and metadata for CONFIG."""
    graphgpt.manual_seed(3)
    model = graphgpt.nn.GPT(**CONFIG)
    optimizer = AdamW(model.named_parameters(), lr=1e-2)
    tokens = np.arange(12).reshape(2, 6) % CONFIG["vocab_size"]
    graphgpt.nn.functional.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens)).backward()
    optimizer.step()
    generator = np.random.default_rng(11)
    generator.integers(0, 100, size=5)
    metadata = {"config": CONFIG, "vocabulary": list("\n abc€é"), "step": 1,
                "optimizer": {"type": "AdamW", "hyperparameters": optimizer.hyperparameters},
                "sampler_state": generator.bit_generator.state, "options": {"batch": 2, "seq_len": 6}}
    return model.state_dict(), optimizer.state_dict()["state"], metadata, generator


def test_round_trip_is_exact(tmp_path):
    model_state, optimizer_state, metadata, generator = saved_state()
    path = str(tmp_path / "deep" / "er" / LATEST)  # missing folders are created
    save_checkpoint(path, model_state, optimizer_state, metadata)
    loaded = load_checkpoint(path)
    assert loaded.metadata == {"format": "graphgpt-checkpoint", "version": 1, **json.loads(json.dumps(metadata))}
    for saved, back in ((model_state, loaded.model_state), (optimizer_state, loaded.optimizer_state)):
        assert saved.keys() == back.keys()
        for name, value in saved.items():
            assert back[name].dtype == value.dtype and back[name].tobytes() == value.tobytes(), name
    restored = np.random.default_rng(0)
    restored.bit_generator.state = loaded.metadata["sampler_state"]
    np.testing.assert_array_equal(restored.integers(0, 1 << 30, size=8), generator.integers(0, 1 << 30, size=8))
    assert os.listdir(tmp_path / "deep" / "er") == [LATEST]


def write_half_then_fail(file, **arrays):
    file.write(b"PK\x03\x04" + b"\0" * 100)
    raise OSError("disk full")


def fail(*args, **kwargs):
    raise OSError("disk full")


@pytest.mark.parametrize("target,replacement", [(checkpoint_module.np, "savez"), (checkpoint_module.os, "fsync"),
                                                 (checkpoint_module.os, "replace")])
def test_a_write_failing_at_any_point_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target, replacement):
    model_state, optimizer_state, metadata, _ = saved_state()
    path = str(tmp_path / LATEST)
    save_checkpoint(path, model_state, optimizer_state, metadata)
    before = (tmp_path / LATEST).read_bytes()
    monkeypatch.setattr(target, replacement, write_half_then_fail if replacement == "savez" else fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model_state, optimizer_state, {**metadata, "step": 2})
    monkeypatch.undo()
    assert (tmp_path / LATEST).read_bytes() == before and os.listdir(tmp_path) == [LATEST]
    assert load_checkpoint(path).metadata["step"] == 1


class Payload:
    """Unpickling this would create the marker file: the test asserts it never exists."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_archive_holding_a_pickled_object_is_refused_unrun(tmp_path):
    model_state, optimizer_state, metadata, _ = saved_state()
    good = tmp_path / "good.npz"
    save_checkpoint(str(good), model_state, optimizer_state, metadata)
    arrays = dict(np.load(good, allow_pickle=False))
    Payload.marker = str(tmp_path / "ran")
    arrays["model/lm_head.weight"] = np.array([Payload()], dtype=object)
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as file:
        np.savez(file, **arrays)
    with pytest.raises(CheckpointError, match="bad.npz: unreadable .*Object arrays cannot be loaded"):
        load_checkpoint(str(bad))
    assert not (tmp_path / "ran").exists()


def edit_metadata(metadata):
    """Each case: (change to the metadata, expected message)."""
    return {
        "future version": ({**metadata, "version": 2}, "format version 2 is not supported"),
        "missing field": ({k: v for k, v in metadata.items() if k != "sampler_state"},
                          "field 'sampler_state' missing"),
        "config type": ({**metadata, "config": {**CONFIG, "embed_dim": "8"}}, "embed_dim must be an integer"),
        "config range": ({**metadata, "config": {**CONFIG, "num_layers": 0}}, r"num_layers must be an integer in \[1"),
        "config extra": ({**metadata, "config": {**CONFIG, "dropout": 0}}, "config must have exactly"),
        "indivisible": ({**metadata, "config": {**CONFIG, "num_heads": 3}}, "divisible by num_heads"),
        "duplicate char": ({**metadata, "vocabulary": list("\n abca€")}, "7 distinct single characters"),
        "short vocabulary": ({**metadata, "vocabulary": list("abc")}, "7 distinct single characters"),
        "negative step": ({**metadata, "step": -1}, "step must be non-negative"),
    }


@pytest.mark.parametrize("case", list(edit_metadata({})))
def test_wrong_metadata_is_refused_with_the_reason(tmp_path, case):
    model_state, optimizer_state, metadata, _ = saved_state()
    good = tmp_path / "good.npz"
    save_checkpoint(str(good), model_state, optimizer_state, metadata)
    document = json.loads(np.load(good, allow_pickle=False)["metadata"].tobytes())
    changed, message = edit_metadata(document)[case]
    arrays = dict(np.load(good, allow_pickle=False))
    arrays["metadata"] = np.frombuffer(json.dumps(changed).encode(), np.uint8)
    with open(tmp_path / "bad.npz", "wb") as file:
        np.savez(file, **arrays)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("damage,message", [
    ("empty file", "unreadable"), ("bare .npy", "unreadable .*not a zip file"), ("folder", "no such file"),
    ("metadata not JSON", "metadata is not valid JSON"), ("stray record", r"unexpected records \['extra'\]"),
    ("integer optimizer state", "optimizer state step is not float"),
])
def test_wrong_files_are_refused_with_the_reason(tmp_path, damage, message):
    model_state, optimizer_state, metadata, _ = saved_state()
    good = tmp_path / "good.npz"
    save_checkpoint(str(good), model_state, optimizer_state, metadata)
    arrays = dict(np.load(good, allow_pickle=False))
    bad = tmp_path / "bad.npz"
    if damage == "empty file":
        bad.write_bytes(b"")
    elif damage == "bare .npy":
        with open(bad, "wb") as file:
            np.save(file, np.zeros(3, np.float32))
    elif damage == "folder":
        bad.mkdir()
    else:
        if damage == "metadata not JSON":
            arrays["metadata"] = np.frombuffer(b"{not json", np.uint8)
        elif damage == "stray record":
            arrays["extra"] = np.zeros(2)
        else:
            arrays["optimizer/step"] = np.array(1, np.int64)
        with open(bad, "wb") as file:
            np.savez(file, **arrays)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(bad))


def test_resume_from_a_damaged_checkpoint_is_refused_before_training(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    run_quietly(tiny_options(str(data), tmp_path / "run", steps=4))
    latest = tmp_path / "run" / LATEST
    latest.write_bytes(latest.read_bytes()[:-40])  # as a copy cut short would be
    damaged = latest.read_bytes()
    with pytest.raises(CheckpointError, match="unreadable"):
        run_quietly(tiny_options(str(data), tmp_path / "run", resume=True))
    assert latest.read_bytes() == damaged
