"""`graphgpt train` reporting as nanoGPT's train.py does: the loss log (loss.csv) and curve (loss.svg) read back,
the warmup + cosine learning-rate schedule against its formula (and torch's CosineAnnealingLR), a compiled step
whose learning rate really follows the schedule, the progress bar's fields, --config files and their refusals,
--best keeping the checkpoint of the lowest validation loss, and the samples' prompts."""

import csv
import io
import math
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import graphgpt
from graphgpt.cli import main
from graphgpt.nn import functional as F
from graphgpt.optim import SGD
from graphgpt.training.checkpoint import load_checkpoint
from graphgpt.training.commands import train_options
from graphgpt.training.loss_log import COLUMNS, LOSS_CURVE, LOSS_LOG, read_loss_log
from graphgpt.training.progress import Progress, step_flops
from graphgpt.training.schedule import learning_rate
from graphgpt.training.trainer import BEST, LATEST, TrainOptions
from conftest import make_gpt, make_tokens
import test_train
from test_train import run_quietly

data_file = test_train.data_file  # the fixture writing test_train's text to a file


def tiny_options(data_file, folder, **overrides) -> TrainOptions:
    """test_train's tiny run, 12 steps long with 3 of warmup unless told otherwise."""
    return test_train.tiny_options(data_file, folder, **{"steps": 12, "warmup": 3, **overrides})


# ---- the schedule ----------------------------------------------------------------------------------------------

def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, transcribed."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 20), (100, 3000), (20, 20), (25, 20)])
def test_the_schedule_is_nanogpts_warmup_and_cosine(warmup, total):
    rates = [learning_rate(it, 3e-3, warmup, 3e-4, total) for it in range(total)]
    assert rates == [nanogpt_get_lr(it, 3e-3, warmup, total, 3e-4) for it in range(total)]
    if 0 < warmup < total:
        assert rates[warmup - 1] < rates[warmup] == 3e-3 and all(a > b for a, b in zip(rates[warmup:], rates[warmup + 1:]))
    assert learning_rate(total, 3e-3, min(warmup, total - 1), 3e-4, total) == pytest.approx(3e-4, rel=1e-12)


def test_the_decay_is_torchs_cosine_annealing():
    torch = pytest.importorskip("torch")
    warmup, total, peak, floor = 5, 40, 2e-3, 1e-4
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=floor)
    for it in range(warmup, total):
        assert learning_rate(it, peak, warmup, floor, total) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-9)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("shards", [1, 2])
def test_a_compiled_step_moves_the_weights_by_the_scheduled_rate(shards):
    """SGD moves each weight by lr * lr_scale * gradient: a step at scale 0.25 moves them a quarter as far as the
    same step at scale 1, without recompiling (the scale is state the compiled step reads at every run)."""
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2).to("float64")  # the deltas' rounding well below 1e-9
    tokens, targets = make_tokens(11, 2, 6), make_tokens(11, 2, 6, seed=1)
    optimizer = SGD(lr=0.1)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, optimizer=optimizer, shards=shards)
    before = {name: value.copy() for name, value in model.state_dict().items()}
    moved = {}
    for scale in (1.0, 0.25):
        optimizer.lr_scale = scale
        step.run(tokens, targets)
        moved[scale] = {name: value - before[name] for name, value in model.state_dict().items()}
        model.load_state_dict(before)
    for name, delta in moved[1.0].items():
        assert np.abs(delta).max() > 0, name
        np.testing.assert_allclose(moved[0.25][name], 0.25 * delta, rtol=1e-9, atol=1e-15, err_msg=name)
    assert "lr_scale" not in optimizer.state_dict()["state"]  # set by the schedule, not saved


def test_the_trainer_steps_at_the_scheduled_rates(data_file, tmp_path):
    """AdamW's first step moves every weight by lr * g / (|g| + eps): by the step's learning rate, whatever the
    gradient's size. A one-step run with warmup 9 moves them by a tenth of --lr, as the schedule says."""
    graphgpt.manual_seed(0)
    result, _ = run_quietly(tiny_options(data_file, tmp_path / "one", steps=1, warmup=9, weight_decay=0.0))
    assert result.learning_rates == [learning_rate(0, 1e-2, 9, 1e-3, 1)] == [pytest.approx(1e-3)]
    graphgpt.manual_seed(0)
    initial = graphgpt.nn.GPT(**load_checkpoint(str(tmp_path / "one" / LATEST)).metadata["config"]).state_dict()
    trained = load_checkpoint(str(tmp_path / "one" / LATEST)).model_state
    largest = max(np.abs(trained[name] - initial[name]).max() for name in initial)
    assert largest == pytest.approx(1e-3, rel=1e-3)

    result, _ = run_quietly(tiny_options(data_file, tmp_path / "all", steps=12, warmup=3, lr_min=2e-3))
    assert result.learning_rates == [learning_rate(it, 1e-2, 3, 2e-3, 12) for it in range(12)]


# ---- the loss log and curve ------------------------------------------------------------------------------------

def test_a_run_writes_a_loss_log_and_curve_that_read_back(data_file, tmp_path):
    result, out = run_quietly(tiny_options(data_file, tmp_path))
    with open(tmp_path / LOSS_LOG, newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0].keys()) == COLUMNS == ("step", "train_loss", "validation_loss", "learning_rate",
                                                "ms_per_step", "tokens_per_second")
    assert [int(row["step"]) for row in rows] == list(range(1, 13))
    assert [float(row["train_loss"]) for row in rows] == result.losses
    assert all(math.isfinite(float(row[name])) and float(row[name]) > 0 for row in rows
               for name in ("train_loss", "learning_rate", "ms_per_step", "tokens_per_second"))
    evaluated = {int(row["step"]): float(row["validation_loss"]) for row in rows if row["validation_loss"]}
    assert sorted(evaluated) == [4, 8, 12] and evaluated[12] == result.validation_loss
    for step, loss in evaluated.items():  # the printed losses, to their 4 decimals
        assert re.search(rf"step {step}: validation loss {loss:.4f}, train loss \d+\.\d{{4}}\n", out)
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx(result.learning_rates, rel=1e-5)

    svg = ElementTree.parse(tmp_path / LOSS_CURVE).getroot()
    lines = {line.get("data-name"): line for line in svg.iter("{http://www.w3.org/2000/svg}polyline")}
    assert sorted(lines) == ["train", "val"]
    assert [len(lines[name].get("points").split()) for name in ("train", "val")] == [12, 3]
    assert "step" in {text.text for text in svg.iter("{http://www.w3.org/2000/svg}text")}


def test_a_resumed_run_continues_the_log_where_its_checkpoint_was(data_file, tmp_path):
    """A run killed after logging steps beyond its checkpoint (here: a log of steps 1..6 beside a checkpoint of
    step 4) resumes with the rows up to step 4 and logs the rest as the uninterrupted run does."""
    whole, _ = run_quietly(tiny_options(data_file, tmp_path / "whole"))
    run_quietly(tiny_options(data_file, tmp_path / "longer", steps=6))
    run_quietly(tiny_options(data_file, tmp_path / "cut", steps=4))  # steps 1..4 are warmup and peak, whatever
    (tmp_path / "cut" / LOSS_LOG).write_text((tmp_path / "longer" / LOSS_LOG).read_text())
    assert [row["step"] for row in read_loss_log(str(tmp_path / "cut" / LOSS_LOG))] == list(range(1, 7))
    resumed, _ = run_quietly(tiny_options(data_file, tmp_path / "cut", resume=True))
    rows = read_loss_log(str(tmp_path / "cut" / LOSS_LOG))
    assert [row["step"] for row in rows] == list(range(1, 13))
    assert [row["train_loss"] for row in rows] == whole.losses  # the schedule went on as if never stopped
    assert resumed.learning_rates == whole.learning_rates[4:]


# ---- progress --------------------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_eta_ms_per_step_smoothed_loss_tokens_and_flops_against_the_peak():
    out = io.StringIO()
    progress = Progress(total=20, out=out, enabled=True, tokens_per_step=1000, flops_per_step=2e8, peak_flops=1e10)
    for step in range(1, 21):
        progress.update(step, loss=3.0 if step % 2 else 1.0, seconds=0.05)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert [int(re.search(r"(\d+)/20", line).group(1)) for line in lines] == list(range(2, 21, 2))
    smoothed = 0.0
    for step in range(1, 21):
        smoothed = 0.9 * smoothed + 0.1 * (3.0 if step % 2 else 1.0)
    assert f"loss {smoothed / (1 - 0.9 ** 20):.3f}, 50.0 ms/step, 20.0k tok/s, 4.00 GFLOP/s (40.0% of peak)" \
        in lines[-1]
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", lines[0])  # elapsed < remaining


@pytest.mark.parametrize("out,enabled", [(Terminal(), True), (Terminal(), False), (io.StringIO(), False)])
def test_progress_draws_one_bar_on_a_terminal_and_nothing_when_off(out, enabled):
    progress = Progress(total=20, out=out, enabled=enabled, tokens_per_step=10, flops_per_step=10)
    for step in range(1, 21):
        progress.update(step, loss=2.5, seconds=0.01)
    progress.write("step 20: validation loss 2.5000, train loss 2.4000")
    progress.finish()
    text = out.getvalue()
    if not enabled:
        assert text == "step 20: validation loss 2.5000, train loss 2.4000\n"
    else:
        assert "\r" in text and "20/20" in text and "loss 2.500, 10.0 ms/step" in text
        assert "step 20: validation loss 2.5000, train loss 2.4000\n" in text


def test_step_flops_counts_every_graph_that_runs():
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 4, 6)
    whole = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    split = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=2)
    assert step_flops(whole) == whole.stages[-1].flops > 0
    shards = [entry for entry in split.program.graphs if entry.runs == 2]
    assert len(shards) == 1 and step_flops(split) >= 2 * shards[0].stages[-1].flops


# ---- --best, prompts, --config ---------------------------------------------------------------------------------

def test_best_keeps_the_checkpoint_of_the_lowest_validation_loss(data_file, tmp_path):
    # A rate that overshoots after warmup makes the validation loss rise again: the best is not the last.
    result, out = run_quietly(tiny_options(data_file, tmp_path, steps=24, eval_every=2, lr=0.3, warmup=0,
                                           lr_min=0.3, best=True))
    evaluated = [row for row in read_loss_log(str(tmp_path / LOSS_LOG)) if row["validation_loss"] is not None]
    lowest = min(evaluated, key=lambda row: row["validation_loss"])
    assert lowest["step"] != evaluated[-1]["step"], "the run never got worse: nothing shows --best works"
    best = load_checkpoint(str(tmp_path / BEST))
    assert best.metadata["step"] == lowest["step"] == result.best_step
    assert load_checkpoint(str(tmp_path / LATEST)).metadata["step"] == 24
    assert f"lowest validation loss {lowest['validation_loss']:.4f}" in out


def test_samples_show_their_prompts_taken_in_turn_from_a_file(data_file, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("static \n\n  run \n", encoding="utf-8")
    result, out = run_quietly(tiny_options(data_file, tmp_path / "run", steps=2, sample_chars=6, num_samples=3,
                                           prompt_file=str(prompts)))
    assert [text[:-6] for text in result.samples] == ["static ", "  run ", "static "]
    assert re.findall(r"--- sample (\d) of 3, prompt (.*) ---", out) == [
        ("1", "'static '"), ("2", "'  run '"), ("3", "'static '")]


def test_a_prompt_the_model_cannot_take_is_refused_before_training(data_file, tmp_path):
    with pytest.raises(ValueError, match=r"--prompt has 1 character\(s\) outside the vocabulary.*'@'"):
        run_quietly(tiny_options(data_file, tmp_path / "run", prompt="static @"))
    assert not (tmp_path / "run").exists()


def test_generate_takes_several_prompts_and_samples(data_file, tmp_path, capsys):
    run_quietly(tiny_options(data_file, tmp_path, steps=2))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("static\nrun\n", encoding="utf-8")
    assert main(["generate", "--checkpoint", str(tmp_path / LATEST), "--prompt-file", str(prompts),
                 "--length", "5", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"--- sample (\d) of 3, prompt '(\w+)' ---\n", out)
    assert headers == [("1", "static"), ("2", "run"), ("3", "static")]
    samples = re.split(r"--- sample \d of 3, prompt '\w+' ---\n", out)[1:]
    for (_, prompt), text in zip(headers, samples):  # the prompt, 5 sampled characters, a newline
        assert text.startswith(prompt) and len(text) == len(prompt) + 5 + 1, text


def test_a_config_file_sets_every_option_and_flags_override_it(data_file, tmp_path, capsys, monkeypatch):
    import graphgpt.cli as cli

    taken = []
    monkeypatch.setattr(cli, "command_train", lambda args: taken.append(train_options(args)) or 0)
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{data_file}"\nsteps = 7\nlr = 1\nlr_min = 0.5\nwarmup = 0\nclip_grad_norm = 0\n'
                      f'best = true\nno_progress = true\nprompt = "static "\ncheckpoint_dir = "elsewhere"\n')
    assert main(["train", "--config", str(config), "--steps", "9"]) == 0
    options = taken[-1]
    assert (options.data, options.steps, options.lr, options.lr_min, options.warmup, options.clip) == \
        (data_file, 9, 1.0, 0.5, 0, 0.0)
    assert options.best and not options.progress and options.prompt == "static "
    assert options.checkpoint_dir == "elsewhere" and isinstance(options.lr, float)


@pytest.mark.parametrize("content,message", [
    ("stepz = 4\n", "key 'stepz'; graphgpt train takes backend, batch, best, checkpoint_dir, "),
    ("steps = 0\n", "key steps: expected a whole number of at least 1, got a whole number 0"),
    ("steps = 2.5\n", "key steps: expected a whole number of at least 1, got a number 2.5"),
    ('steps = "4"\n', "key steps: expected a whole number of at least 1, got text '4'"),
    ("steps = true\n", "key steps: expected a whole number of at least 1, got true/false True"),
    ("lr = nan\n", "key lr: expected a finite number above 0, got a number nan"),
    ("lr = -1.0\n", "key lr: expected a finite number above 0"),
    ("best = 1\n", "key best: expected true or false, got a whole number 1"),
    ('data = ""\n', "key data: expected a file name, got an empty string"),
    ("data = 3\n", "key data: expected text, got a whole number 3"),
    ('backend = "cuda"\n', "key backend: expected one of numpy, numba, got 'cuda'"),
    ("[model]\nembed = 32\n", "unknown key 'model'"),
    ("config = 'other.toml'\n", "unknown key 'config'"),
    ("steps = \n", "not valid TOML: "),
    ("lr = 1e-3\nlr_min = 1e-2\n", r"--lr-min \(0.01\) must not exceed --lr \(0.001\)"),
])
def test_a_config_file_is_refused_in_one_line_naming_the_key_and_the_file(tmp_path, capsys, monkeypatch, content,
                                                                          message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as refused:
        main(["train", "--config", "run.toml", "--checkpoint-dir", "run"])
    assert refused.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphgpt train: error: "), lines
    assert re.search(message, lines[0]), lines[0]
    if "--lr-min" not in message:
        assert "--config run.toml: " in lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.toml"]  # nothing ran


def test_chart_ticks_are_round_and_a_lone_point_is_drawn():
    from graphgpt.svg_chart import _ticks, line_chart

    assert _ticks(0.0, 5.13) == [0.0, 2.0, 4.0]
    assert _ticks(1, 300, whole=True) == [100.0, 200.0, 300.0]
    assert _ticks(0.0, 0.37) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    svg = line_chart({"train": [(step, 5.0 - step / 100) for step in range(1, 301)], "val": [(300, 2.3)]},
                     title="loss", x_label="step", y_label="nats")
    assert svg.count("<circle") == 1  # the one validation point, not the 300 training ones


def test_atomic_files_replace_whole_and_clear_a_killed_writers_leftovers(tmp_path):
    from graphgpt.training.atomic_file import atomic_file

    target = tmp_path / "loss.csv"
    stale = tmp_path / ".loss.csv.999999.tmp"  # a writer killed mid-write left this
    stale.write_text("half a row")
    with atomic_file(str(target), "w") as file:
        file.write("step\n")
    assert target.read_text() == "step\n" and not stale.exists()
    with pytest.raises(RuntimeError):
        with atomic_file(str(target), "w") as file:
            file.write("torn")
            raise RuntimeError("the writer fails half way")
    assert target.read_text() == "step\n" and [path.name for path in tmp_path.iterdir()] == ["loss.csv"]
