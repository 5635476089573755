"""Training with the compiled step: a resumed run repeats the uninterrupted loss curve exactly, checkpoints are
atomic and validated (missing, truncated, corrupt, pickled or mismatched files refused, nothing lost), sampling
respects temperature/top-k and refuses bad prompts, and the CLI trains and reports against the unigram baseline."""

import io
import json
import os

import numpy as np
import pytest

import graphgpt
from graphgpt.cli import main
from graphgpt.nn import GPT
from graphgpt.training import checkpoint as checkpoint_module
from graphgpt.training.checkpoint import CheckpointError, load_checkpoint
from graphgpt.training.corpus import BatchSampler, DataError, Vocabulary, default_corpus, unigram_cross_entropy
from graphgpt.training.loss_log import LOSS_CURVE, LOSS_LOG
from graphgpt.training.sampling import sample
from graphgpt.training.trainer import LATEST, TrainOptions, train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "pack my box with five dozen liquor jugs! " * 40)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return str(path)


def tiny(data_file, folder, **overrides):
    options = dict(data=data_file, steps=12, batch=4, seq_len=16, embed=16, layers=1, heads=2, lr=1e-2,
                   eval_every=6, eval_batches=2, checkpoint_dir=str(folder), checkpoint_every=5, sample_chars=0,
                   progress=False)
    options.update(overrides)
    return TrainOptions(**options)


def quiet(options):
    return train(options, out=io.StringIO())


def test_a_batch_is_windows_of_the_text_and_the_tokens_after_them():
    tokens = np.arange(1000) * 7
    sampler = BatchSampler(tokens, 4, 9, seed=5)
    starts = np.random.default_rng(5).integers(0, 1000 - 9 - 1, size=4)  # the sampler's own draw
    inputs, targets = sampler.next()
    assert inputs.flags.c_contiguous and targets.flags.c_contiguous  # a compiled step takes them as they are
    np.testing.assert_array_equal(inputs, [tokens[start:start + 9] for start in starts])
    np.testing.assert_array_equal(targets, [tokens[start + 1:start + 10] for start in starts])


def test_resumed_run_repeats_the_uninterrupted_loss_curve(data_file, tmp_path):
    uninterrupted = quiet(tiny(data_file, tmp_path / "a"))
    quiet(tiny(data_file, tmp_path / "b", steps=5))  # stops after the step-5 checkpoint
    resumed = quiet(tiny(data_file, tmp_path / "b", resume=True))
    assert resumed.first_step == 5 and len(resumed.losses) == 7
    assert resumed.losses == uninterrupted.losses[5:]
    a, b = load_checkpoint(str(tmp_path / "a" / LATEST)), load_checkpoint(str(tmp_path / "b" / LATEST))
    assert a.metadata["step"] == b.metadata["step"] == 12
    for name, value in a.model_state.items():
        np.testing.assert_array_equal(value, b.model_state[name])
    for name, value in a.optimizer_state.items():
        np.testing.assert_array_equal(value, b.optimizer_state[name])


def test_checkpoint_holds_what_resuming_needs(data_file, tmp_path):
    quiet(tiny(data_file, tmp_path))
    saved = load_checkpoint(str(tmp_path / LATEST))
    assert saved.metadata["config"]["vocab_size"] == len(set(TEXT)) == len(saved.metadata["vocabulary"])
    assert saved.metadata["optimizer"]["type"] == "AdamW" and saved.metadata["step"] == 12
    assert float(saved.optimizer_state["step"]) == 12.0 and "exp_avg.lm_head.weight" in saved.optimizer_state
    model = GPT(**saved.metadata["config"])
    model.load_state_dict(saved.model_state)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(data_file, tmp_path, monkeypatch):
    tmp_path = tmp_path / "run"
    quiet(tiny(data_file, tmp_path, steps=5))
    before = (tmp_path / LATEST).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        quiet(tiny(data_file, tmp_path, resume=True, steps=10))
    assert (tmp_path / LATEST).read_bytes() == before
    # No temporary file left behind; the loss log and curve are the first run's.
    assert sorted(os.listdir(tmp_path)) == sorted([LATEST, LOSS_LOG, LOSS_CURVE])
    assert load_checkpoint(str(tmp_path / LATEST)).metadata["step"] == 5


def write_archive(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize("damage,message", [
    ("missing", "no such file"),
    ("truncated", "unreadable"),
    ("garbage", "unreadable"),
    ("pickled", "unreadable"),
    ("no metadata", "no metadata record"),
    ("wrong format", "not a graphgpt checkpoint"),
    ("wrong shape", "weight lm_head.weight is float32\\[3, 3\\]"),
    ("bad vocabulary", "vocabulary must be"),
    ("nan weights", "NaN or infinity"),
    ("absurd config", "config vocab_size must be an integer in \\[1, 1048576\\]"),
    ("zip bomb", "unpacks to .* bytes, more than"),
    ("bad sampler state", "sampler_state is not a valid generator state"),
    ("foreign optimizer state", "optimizer state exp_avg.nowhere does not match a parameter"),
])
def test_damaged_checkpoints_are_refused(data_file, tmp_path, monkeypatch, damage, message):
    quiet(tiny(data_file, tmp_path / "good", steps=5))
    good = tmp_path / "good" / LATEST
    bad = tmp_path / "bad.npz"
    valid = dict(np.load(good, allow_pickle=False))
    metadata = valid["metadata"].tobytes().decode()
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"PK\x03\x04 not really a zip")
    elif damage == "pickled":
        with open(bad, "wb") as file:
            np.save(file, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    elif damage == "no metadata":
        write_archive(bad, **{k: v for k, v in valid.items() if k != "metadata"})
    elif damage == "wrong format":
        write_archive(bad, **{**valid, "metadata": np.frombuffer(b'{"format": "x"}', np.uint8)})
    elif damage == "wrong shape":
        write_archive(bad, **{**valid, "model/lm_head.weight": np.zeros((3, 3), np.float32)})
    elif damage == "bad vocabulary":
        changed = metadata.replace('"vocabulary": ["', '"vocabulary": ["ab", "')
        write_archive(bad, **{**valid, "metadata": np.frombuffer(changed.encode(), np.uint8)})
    elif damage == "absurd config":
        document = json.loads(metadata)
        document["config"]["vocab_size"] = 10 ** 12
        write_archive(bad, **{**valid, "metadata": np.frombuffer(json.dumps(document).encode(), np.uint8)})
    elif damage == "zip bomb":  # 64 MiB of zeros deflate to a few KiB; the limit is lowered to 16 MiB here
        import zipfile
        with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("model/huge.npy", b"\0" * (64 << 20))
        monkeypatch.setattr(checkpoint_module, "MAX_CHECKPOINT_BYTES", 16 << 20)
    elif damage == "bad sampler state":
        document = json.loads(metadata)
        document["sampler_state"] = {"bit_generator": "PCG64"}
        write_archive(bad, **{**valid, "metadata": np.frombuffer(json.dumps(document).encode(), np.uint8)})
    elif damage == "foreign optimizer state":
        write_archive(bad, **{**valid, "optimizer/exp_avg.nowhere": np.zeros(3, np.float32)})
    elif damage == "nan weights":
        write_archive(bad, **{**valid, "model/ln_f.gamma": np.full_like(valid["model/ln_f.gamma"], np.nan)})
    path = str(tmp_path / "missing.npz") if damage == "missing" else str(bad)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_data_outside_the_checkpoint_vocabulary_is_refused_and_nothing_lost(data_file, tmp_path):
    quiet(tiny(data_file, tmp_path, steps=5))
    before = (tmp_path / LATEST).read_bytes()
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "ZQ€")
    with pytest.raises(DataError, match="3 character\\(s\\) outside the vocabulary.*'Q', 'Z', '€'"):
        quiet(tiny(str(other), tmp_path, resume=True))
    assert (tmp_path / LATEST).read_bytes() == before


def test_sampling_refuses_bad_prompts_and_top1_is_greedy(data_file, tmp_path):
    quiet(tiny(data_file, tmp_path))
    saved = load_checkpoint(str(tmp_path / LATEST))
    model = GPT(**saved.metadata["config"])
    model.load_state_dict(saved.model_state)
    vocabulary = Vocabulary(saved.metadata["vocabulary"])
    # A prompt past the context continues from its last max_seq_len characters (as the model sees it).
    assert sample(model, vocabulary, "the" + "x" * 16, 5, seed=2)[3:] == sample(model, vocabulary, "x" * 16, 5, seed=2)
    with pytest.raises(DataError, match="outside the vocabulary.*'@'"):
        sample(model, vocabulary, "the @", 5)
    greedy = sample(model, vocabulary, "the quick", 6, top_k=1, seed=1)
    tokens = list(vocabulary.encode("the quick"))
    for _ in range(6):  # independently: argmax of the eager forward
        logits = model(graphgpt.Tensor(np.array([tokens[-16:]]))).data[0, -1]
        tokens.append(int(np.argmax(logits)))
    assert greedy == vocabulary.decode(tokens)
    assert sample(model, vocabulary, "the", 20, seed=3) == sample(model, vocabulary, "the", 20, seed=3)


def test_unigram_baseline_on_a_known_text():
    vocabulary = Vocabulary.of("aab")
    train_tokens, validation = vocabulary.encode("aaab"), vocabulary.encode("ab")
    # add-one counts: a 3+1, b 1+1 -> p(a) = 4/6, p(b) = 2/6
    expected = -(np.log(4 / 6) + np.log(2 / 6)) / 2
    assert unigram_cross_entropy(train_tokens, validation, len(vocabulary)) == pytest.approx(expected)


def test_default_corpus_is_standard_library_source():
    text = default_corpus()
    assert len(text) > 200_000 and "def " in text and "import " in text
    assert text == default_corpus()


def test_cli_trains_and_generates(data_file, tmp_path, capsys):
    folder = str(tmp_path / "run")
    assert main(["train", "--data", data_file, "--steps", "30", "--batch", "4", "--seq-len", "16", "--embed",
                 "16", "--layers", "1", "--heads", "2", "--checkpoint-dir", folder, "--sample-chars", "20",
                 "--eval-every", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "final validation loss" in out and "unigram (character frequency) baseline" in out
    assert "step 10: validation loss" in out and "--- sample 1 of 2, prompt " in out
    assert main(["generate", "--checkpoint", os.path.join(folder, LATEST), "--prompt", "the ", "--length",
                 "10"]) == 0
    assert capsys.readouterr().out.startswith("--- sample 1 of 1, prompt 'the ' ---\nthe ")
    assert main(["generate", "--checkpoint", str(tmp_path / "none.npz"), "--prompt", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_resume_keeps_the_checkpoints_settings(data_file, tmp_path):
    quiet(tiny(data_file, tmp_path, steps=5))
    out = io.StringIO()
    train(tiny(data_file, tmp_path, resume=True, lr=0.5, embed=32), out=out)
    assert "resuming with the checkpoint's --embed 16 (not 32), --lr 0.01 (not 0.5)" in out.getvalue()
    assert load_checkpoint(str(tmp_path / LATEST)).metadata["options"]["lr"] == 0.01


def test_unwritable_checkpoint_folder_fails_before_training(data_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write checkpoints to --checkpoint-dir"):
        quiet(tiny(data_file, blocker / "run"))


def test_text_too_short_for_validation_windows_says_which_part(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 12)  # 120 characters: 12 held out, fewer than seq-len 16 needs
    with pytest.raises(DataError, match="the validation part of the text has 12 characters"):
        quiet(tiny(str(short), tmp_path / "run"))


@pytest.mark.parametrize("option,value,message", [
    ("lr", float("nan"), "--lr must be a finite number above 0, got nan"),
    ("lr", float("inf"), "--lr must be a finite number above 0, got inf"),
    ("weight_decay", -1.0, "--weight-decay must be a finite number of at least 0, got -1.0"),
    ("clip", -1.0, "--clip-grad-norm must be a finite number of at least 0, or None \\(no clipping\\), got -1.0"),
    ("warmup", -1, "--warmup must be a whole number of at least 0, got -1"),
    ("lr_min", 1.0, "--lr-min \\(1.0\\) must not exceed --lr \\(0.01\\)"),
    ("seed", -1, "--seed must be a whole number from 0 to 4294967295, got -1"),
    ("sample_chars", -3, "--sample-chars must be a whole number of at least 0, got -3"),
    ("steps", True, "--steps must be a whole number of at least 1, got True"),
    ("seq_len", 1 << 17, "--seq-len must be a whole number from 1 to 65536"),
])
def test_train_options_made_in_python_are_checked_as_the_command_line_is(data_file, tmp_path, option, value,
                                                                         message):
    """`graphgpt train --lr nan` trained to `final validation loss nan`; TrainOptions(lr=nan) still could."""
    with pytest.raises(DataError, match=message):
        quiet(tiny(data_file, tmp_path / "run", **{option: value}))
    assert not (tmp_path / "run").exists()


def test_sampling_refuses_a_negative_length_and_nonsense_settings(data_file, tmp_path):
    quiet(tiny(data_file, tmp_path, steps=1))
    saved = load_checkpoint(str(tmp_path / LATEST))
    model = GPT(**saved.metadata["config"])
    vocabulary = Vocabulary(saved.metadata["vocabulary"])
    for settings, message in ((dict(length=-5), "length must be a whole number, 0 or more, got -5"),
                              (dict(length=2.5), "length must be a whole number"),
                              (dict(temperature=float("nan")), "temperature must be a finite number above 0"),
                              (dict(temperature=float("inf")), "temperature must be a finite number above 0"),
                              (dict(top_k=-1), "top-k must be 0 \\(all\\) or a positive whole number"),
                              (dict(seed=-1), "the sampling seed must be a whole number, 0 or more")):
        with pytest.raises(DataError, match=message):
            sample(model, vocabulary, "the", **{"length": 3, **settings})
    assert sample(model, vocabulary, "the", 0) == "the"  # 0 characters: the prompt, as asked
