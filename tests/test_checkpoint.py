"""Checkpoint files, beyond tests/test_training.py and tests/test_kill_resume.py: an exact round trip, a write
failing at any point (mid-file, at fsync, at the rename) never leaves a broken latest.npz, an .npz holding a
pickled object is refused without running it, and each kind of wrong metadata, array or file is refused with a
CheckpointError saying what is wrong, in one line (issue 12, items 8 to 10): malformed JSON, poisoned optimizer
state and options; what would be refused on reading is refused on writing. Hostile zip members and .npy headers:
tests/test_checkpoint_archives.py."""

import json
import os
from dataclasses import asdict

import numpy as np
import pytest

import graphgpt
from graphgpt.optim import AdamW
from graphgpt.training import checkpoint as checkpoint_module
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from graphgpt.training.trainer import LATEST, TrainOptions
from test_train import TEXT, run_quietly, tiny_options  # the tiny training run and its text, shared

CONFIG = dict(vocab_size=7, embed_dim=8, num_layers=1, num_heads=2, max_seq_len=6)


def saved_state():
    """Model weights, AdamW state after one eager step, a drawn-from sampler state, and metadata for CONFIG, with
    the options the trainer would record for them."""
    graphgpt.manual_seed(3)
    model = graphgpt.nn.GPT(**CONFIG)
    options = TrainOptions(batch=2, seq_len=6, embed=8, layers=1, heads=2, lr=1e-2)
    optimizer = AdamW(model.named_parameters(), lr=options.lr, weight_decay=options.weight_decay,
                      clip_grad_norm=options.clip)
    tokens = np.arange(12).reshape(2, 6) % CONFIG["vocab_size"]
    graphgpt.nn.functional.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens)).backward()
    optimizer.step()
    generator = np.random.default_rng(11)
    generator.integers(0, 100, size=5)
    metadata = {"config": CONFIG, "vocabulary": list("\n abc€é"), "step": 1,
                "optimizer": {"type": "AdamW", "hyperparameters": optimizer.hyperparameters},
                "sampler_state": generator.bit_generator.state, "options": asdict(options)}
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
    with pytest.raises(CheckpointError, match="bad.npz: record model/lm_head.weight holds dtype object"):
        load_checkpoint(str(bad))
    assert not (tmp_path / "ran").exists()


def setting(*keys_and_value):
    """An edit of a metadata document: the value at keys (into objects and lists) set to the last argument."""
    *keys, value = keys_and_value

    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def deleting(*keys):
    def edit(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


def both(*edits):
    def edit(document):
        for each in edits:
            each(document)
    return edit


# Each case: (edit of the metadata document, expected message). The first block was refused before; the rest
# (issue 12, items 9 and 10, and their neighbours) were accepted, or raised something other than CheckpointError.
METADATA_EDITS = {
    "future version": (setting("version", 2), "format version 2 is not supported"),
    "missing field": (deleting("sampler_state"), "field 'sampler_state' missing"),
    "config type": (setting("config", "embed_dim", "8"), "embed_dim must be an integer"),
    "config range": (setting("config", "num_layers", 0), r"num_layers must be an integer in \[1"),
    "config extra": (setting("config", "dropout", 0), "config must have exactly"),
    "indivisible": (setting("config", "num_heads", 3), "divisible by num_heads"),
    "duplicate char": (setting("vocabulary", list("\n abca€")), "7 distinct single characters"),
    "short vocabulary": (setting("vocabulary", list("abc")), "7 distinct single characters"),
    "negative step": (setting("step", -1), "step must be non-negative"),

    "lr as text": (setting("options", "lr", "0.01"), "option lr is '0.01' but the optimizer's lr is 0.01"),
    "lr as text in the hyperparameters": (setting("optimizer", "hyperparameters", "lr", "0.01"),
                                          "not valid for AdamW: learning rate must be positive, got '0.01'"),
    "seed as text": (setting("options", "seed", "0"), "option seed must be a whole number"),
    "negative seed": (setting("options", "seed", -1), "option seed must be a whole number of at least 0"),
    "weight_decay -50": (both(setting("optimizer", "hyperparameters", "weight_decay", -50.0),
                              setting("options", "weight_decay", -50.0)),
                         "not valid for AdamW: weight_decay must be non-negative, got -50"),
    "negative lr": (both(setting("optimizer", "hyperparameters", "lr", -1.0), setting("options", "lr", -1.0)),
                    "not valid for AdamW: learning rate must be positive"),
    "options disagree with the optimizer": (setting("options", "lr", 0.5),
                                            "option lr is 0.5 but the optimizer's lr is 0.01"),
    "betas out of range": (setting("optimizer", "hyperparameters", "betas", [1.5, 0.999]),
                           r"betas must lie in \[0, 1\)"),
    "three betas": (setting("optimizer", "hyperparameters", "betas", [0.9, 0.99, 0.999]), "betas must lie in"),
    "negative eps": (setting("optimizer", "hyperparameters", "eps", -1e-8), "eps must be non-negative"),
    "missing hyperparameter": (deleting("optimizer", "hyperparameters", "eps"), "are not what AdamW records"),
    "foreign hyperparameter": (setting("optimizer", "hyperparameters", "nesterov", True),
                               "not valid for AdamW: .*unexpected keyword argument 'nesterov'"),
    "bool for a number": (setting("optimizer", "hyperparameters", "clip_grad_norm", True),
                          "clip_grad_norm must be positive, got True"),
    "unknown optimizer": (setting("optimizer", "type", "Lion"), "optimizer type 'Lion' is not one of"),
    "optimizer type not text": (setting("optimizer", "type", ["AdamW"]), r"optimizer type \['AdamW'\] is not one"),
    "step as a bool": (setting("step", True), "step must be non-negative"),
    "embed disagrees with the config": (setting("options", "embed", 16),
                                        "option embed is 16 but the config's embed_dim is 8"),
    "nested option": (setting("options", "data", [[1]]), "option 'data' must be a number, text"),
    "missing option": (deleting("options", "lr"), r"options miss \['lr'\]"),
    "unknown metadata field": (setting("extra", 1), r"unexpected metadata fields \['extra'\]"),
    "shards beyond the batch": (setting("shards", 3), "shards must be a whole number from 1 to the batch 2"),
    "sampler integer too large": (setting("sampler_state", "state", "state", 10**50),
                                  r"state must be an integer in \[0, "),
    "sampler integer negative": (setting("sampler_state", "uinteger", -1), "uinteger must be an integer in"),
    "sampler float": (setting("sampler_state", "has_uint32", 0.5), "has_uint32 0 or 1"),
    "sampler extra key": (setting("sampler_state", "junk", 1), "expected PCG64's"),
    "sampler even inc": (setting("sampler_state", "state", "inc", 2), "inc must be odd"),
    "lone surrogate in the vocabulary": (setting("vocabulary", 0, "\ud800"),
                                         "which is not a character of UTF-8 text"),
}

# Edits of the metadata's JSON text that json.dumps would not write (issue 12, item 9, and neighbours).
METADATA_TEXT_EDITS = {
    "NaN learning rate": (lambda text: text.replace('"lr": 0.01', '"lr": NaN'), "JSON constant NaN is not allowed"),
    "1e400 learning rate": (lambda text: text.replace('"lr": 0.01', '"lr": 1e400'),
                            "the number 1e400 is beyond the range of a float"),
    "duplicate key": (lambda text: text.replace('"step": 1', '"step": 5, "step": 1'),
                      "key 'step' appears twice in one object"),
    "5000-digit integer": (lambda text: text.replace('"step": 1', '"step": ' + "1" * 5000),
                           "an integer of 5000 digits"),
    "100k-deep nesting": (lambda text: text.replace('"options": {', '"options": {"deep": ' + "[" * 100_000
                                                    + "]" * 100_000 + ", "), "nested too deeply: 100002 levels"),
}


def good_checkpoint(tmp_path):
    """A valid checkpoint file, its arrays and its metadata text."""
    model_state, optimizer_state, metadata, _ = saved_state()
    good = tmp_path / "good.npz"
    save_checkpoint(str(good), model_state, optimizer_state, metadata)
    arrays = dict(np.load(good, allow_pickle=False))
    return good, arrays, arrays["metadata"].tobytes().decode()


def write_archive(path, arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize("case", list(METADATA_EDITS))
def test_wrong_metadata_is_refused_with_the_reason(tmp_path, case):
    _, arrays, text = good_checkpoint(tmp_path)
    edit, message = METADATA_EDITS[case]
    document = json.loads(text)
    edit(document)
    write_archive(tmp_path / "bad.npz", {**arrays, "metadata": np.frombuffer(json.dumps(document).encode(), np.uint8)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("case", list(METADATA_TEXT_EDITS))
def test_malformed_metadata_json_is_refused_with_the_reason(tmp_path, case):
    _, arrays, text = good_checkpoint(tmp_path)
    edit, message = METADATA_TEXT_EDITS[case]
    changed = edit(text)
    assert changed != text
    write_archive(tmp_path / "bad.npz", {**arrays, "metadata": np.frombuffer(changed.encode(), np.uint8)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "bad.npz"))


def fill(name, value, dtype=np.float32):
    """An edit of the archive's arrays: the array `name` replaced by one of the same shape filled with value."""
    def edit(arrays):
        arrays[name] = np.full(arrays[name].shape, value, dtype)
    return edit


def drop_slot(slot):
    def edit(arrays):
        for name in [name for name in arrays if name.startswith(f"optimizer/{slot}.")]:
            del arrays[name]
    return edit


def add_slot(slot):
    def edit(arrays):
        for name in [name for name in arrays if name.startswith("model/")]:
            arrays[f"optimizer/{slot}.{name[len('model/'):]}"] = np.zeros_like(arrays[name])
    return edit


# Each case: (edit of the archive's arrays, expected message). The first block was refused before; the rest
# (issue 12, item 10, and neighbours) were accepted.
ARRAY_EDITS = {
    "metadata not JSON": (setting("metadata", np.frombuffer(b"{not json", np.uint8)), "metadata: not valid JSON"),
    "stray record": (setting("extra", np.zeros(2)), r"unexpected records \['extra'\]"),
    "integer optimizer state": (setting("optimizer/step", np.array(1, np.int64)), "optimizer state step is not float"),

    "NaN optimizer step": (fill("optimizer/step", np.nan), "optimizer state step is nan"),
    "fractional step": (fill("optimizer/step", 1.5), "optimizer state step is 1.5, expected the metadata's step 1"),
    "step not the metadata's": (fill("optimizer/step", 7), "optimizer state step is 7.0, expected the metadata's"),
    "negative exp_avg_sq": (fill("optimizer/exp_avg_sq.ln_f.gamma", -1), "exp_avg_sq.ln_f.gamma holds negative"),
    "NaN exp_avg_sq": (fill("optimizer/exp_avg_sq.ln_f.gamma", np.nan), "exp_avg_sq.ln_f.gamma holds NaN"),
    "infinite exp_avg": (fill("optimizer/exp_avg.lm_head.weight", np.inf), "exp_avg.lm_head.weight holds NaN or inf"),
    "float64 weight beyond float32": (fill("model/ln_f.gamma", 1e300, np.float64),
                                      r"weight ln_f.gamma holds NaN or infinity \(or a value beyond float32\)"),
    "missing optimizer slot": (drop_slot("exp_avg"), r"optimizer state is missing \['exp_avg\."),
    "SGD's slot in an AdamW checkpoint": (add_slot("momentum_buffer"),
                                          "optimizer state momentum_buffer.* does not match a parameter"),
}


@pytest.mark.parametrize("case", list(ARRAY_EDITS))
def test_wrong_arrays_are_refused_with_the_reason(tmp_path, case):
    _, arrays, _ = good_checkpoint(tmp_path)
    edit, message = ARRAY_EDITS[case]
    edit(arrays)
    write_archive(tmp_path / "bad.npz", arrays)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(tmp_path / "bad.npz"))


def test_fortran_ordered_and_big_endian_weights_load_as_they_are(tmp_path):
    good, arrays, _ = good_checkpoint(tmp_path)
    weight = arrays["model/lm_head.weight"]
    arrays["model/lm_head.weight"] = np.asfortranarray(weight).astype(">f4", order="K")
    write_archive(tmp_path / "other.npz", arrays)
    loaded = load_checkpoint(str(tmp_path / "other.npz")).model_state["lm_head.weight"]
    assert loaded.dtype == np.float32 and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, weight)


@pytest.mark.parametrize("damage,message", [
    ("empty file", "unreadable"), ("bare .npy", "unreadable .*not a zip file"),
    ("folder", r"not a regular file \(a directory\)"),
])
def test_wrong_files_are_refused_with_the_reason(tmp_path, damage, message):
    bad = tmp_path / "bad.npz"
    if damage == "empty file":
        bad.write_bytes(b"")
    elif damage == "bare .npy":
        with open(bad, "wb") as file:
            np.save(file, np.zeros(3, np.float32))
    else:
        bad.mkdir()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(bad))


def test_saving_refuses_what_loading_would_and_keeps_the_previous_checkpoint(tmp_path):
    model_state, optimizer_state, metadata, _ = saved_state()
    path = str(tmp_path / LATEST)
    save_checkpoint(path, model_state, optimizer_state, metadata)
    before = (tmp_path / LATEST).read_bytes()
    diverged = {**model_state, "ln_f.gamma": np.full_like(model_state["ln_f.gamma"], np.nan)}
    with pytest.raises(CheckpointError, match="refusing to write weight ln_f.gamma: it holds NaN or infinity"):
        save_checkpoint(path, diverged, optimizer_state, {**metadata, "step": 2})
    moments = {**optimizer_state, "exp_avg.ln_f.beta": np.full_like(optimizer_state["exp_avg.ln_f.beta"], np.inf)}
    with pytest.raises(CheckpointError, match="refusing to write optimizer state exp_avg.ln_f.beta"):
        save_checkpoint(path, model_state, moments, {**metadata, "step": 2})
    with pytest.raises(CheckpointError, match="refusing to write metadata holding Out of range float values"):
        save_checkpoint(path, model_state, optimizer_state, {**metadata, "options": {"lr": float("nan")}})
    assert (tmp_path / LATEST).read_bytes() == before and os.listdir(tmp_path) == [LATEST]


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


def trained_run(tmp_path):
    """(text file, its run's latest checkpoint, the checkpoint's arrays, its metadata) after 4 training steps."""
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    run_quietly(tiny_options(str(data), tmp_path / "run", steps=4))
    latest = tmp_path / "run" / LATEST
    arrays = dict(np.load(latest, allow_pickle=False))
    return data, latest, arrays, json.loads(arrays["metadata"].tobytes())


def test_resume_from_a_poisoned_checkpoint_is_refused_before_training(tmp_path):
    """weight_decay -50 (in the optimizer's record and in the options the trainer resumes with) used to be
    resumed from, the run training on towards NaN; now nothing trains and the checkpoint is left as it was."""
    data, latest, arrays, document = trained_run(tmp_path)
    both(setting("optimizer", "hyperparameters", "weight_decay", -50.0),
         setting("options", "weight_decay", -50.0))(document)
    write_archive(latest, {**arrays, "metadata": np.frombuffer(json.dumps(document).encode(), np.uint8)})
    poisoned = latest.read_bytes()
    with pytest.raises(CheckpointError, match="weight_decay must be non-negative, got -50"):
        run_quietly(tiny_options(str(data), tmp_path / "run", steps=8, resume=True))
    assert latest.read_bytes() == poisoned


def test_resume_from_another_optimizers_checkpoint_is_a_checkpoint_error(tmp_path):
    """A valid SGD checkpoint cannot be resumed by graphgpt train, which trains with AdamW: refused as a
    CheckpointError naming both, not a ValueError from deep inside load_state_dict."""
    data, latest, arrays, document = trained_run(tmp_path)
    adamw = document["optimizer"]["hyperparameters"]
    document["optimizer"] = {"type": "SGD", "hyperparameters": {
        "lr": adamw["lr"], "clip_grad_norm": adamw["clip_grad_norm"], "momentum": 0.0, "nesterov": False,
        "weight_decay": adamw["weight_decay"]}}
    arrays = {name: array for name, array in arrays.items() if not name.startswith("optimizer/exp_avg")}
    write_archive(latest, {**arrays, "metadata": np.frombuffer(json.dumps(document).encode(), np.uint8)})
    assert load_checkpoint(str(latest)).metadata["optimizer"]["type"] == "SGD"  # a valid checkpoint
    with pytest.raises(CheckpointError, match="holds SGD optimizer state; graphgpt train resumes AdamW runs only"):
        run_quietly(tiny_options(str(data), tmp_path / "run", steps=8, resume=True))
