"""Every argument of every `graphgpt` command is checked before the command runs: a value out of range or a
combination that cannot work is refused in one line (`graphgpt <command>: error: ...`, no usage text, no
traceback) with exit status 2, as argparse refuses an unknown option, and nothing is created on disk. The help
of every command states what each option accepts and its real default."""

import argparse
import re

import pytest

from graphgpt.cli import build_parser, main

TINY_TEXT = "static graphs are traced once and run many times over numpy buffers;\n" * 40
# A tiny run, so that code which failed to refuse a bad value would finish quickly rather than train for minutes.
TINY_TRAIN = ["train", "--data", "text.txt", "--steps", "2", "--batch", "2", "--seq-len", "8", "--embed", "8",
              "--layers", "1", "--heads", "2", "--sample-chars", "0", "--no-progress", "--checkpoint-dir", "run"]
TINY_MODEL = ["--embed", "8", "--layers", "1", "--heads", "2", "--seq-len", "4", "--batch", "1"]

REFUSED = [
    # train: each option out of its range
    (TINY_TRAIN + ["--lr", "nan"], "argument --lr: expected a finite number above 0, got 'nan'"),
    (TINY_TRAIN + ["--lr", "inf"], "argument --lr: expected a finite number above 0, got 'inf'"),
    (TINY_TRAIN + ["--lr", "0"], "argument --lr: expected a finite number above 0"),
    (TINY_TRAIN + ["--lr", "1e999"], "argument --lr: expected a finite number above 0"),
    (TINY_TRAIN + ["--weight-decay", "-0.5"], "argument --weight-decay: expected a finite number of at least 0"),
    (TINY_TRAIN + ["--weight-decay", "nan"], "argument --weight-decay: expected a finite number of at least 0"),
    (TINY_TRAIN + ["--clip-grad-norm", "-1"], "argument --clip-grad-norm/--clip: expected a finite number of at "
                                               "least 0, or None"),
    (TINY_TRAIN + ["--clip", "nan"], "argument --clip-grad-norm/--clip: expected a finite number of at least 0"),
    (TINY_TRAIN + ["--warmup", "-1"], "argument --warmup: expected a whole number of at least 0, got '-1'"),
    (TINY_TRAIN + ["--lr-min", "-0.5"], "argument --lr-min: expected a finite number of at least 0"),
    (TINY_TRAIN + ["--embed", "10", "--heads", "3"], r"--embed \(10\) must be divisible by --heads \(3\)"),
    (TINY_TRAIN + ["--lr", "1e-3", "--lr-min", "2e-3"], r"--lr-min \(0.002\) must not exceed --lr \(0.001\)"),
    (TINY_TRAIN + ["--num-samples", "-2"], "argument --num-samples: expected a whole number of at least 0"),
    (TINY_TRAIN + ["--prompt", ""], "argument --prompt: expected at least one character, got an empty string"),
    (TINY_TRAIN + ["--prompt-file", ""], "argument --prompt-file: expected a file name, got an empty string"),
    (TINY_TRAIN + ["--prompt", "a", "--prompt-file", "p.txt"], "--prompt and --prompt-file both give"),
    (TINY_TRAIN + ["--config", ""], "argument --config: expected a file name, got an empty string"),
    (TINY_TRAIN + ["--config", "absent.toml"], "--config absent.toml: no such file"),
    (TINY_TRAIN + ["--steps", "0"], "argument --steps: expected a whole number of at least 1, got '0'"),
    (TINY_TRAIN + ["--steps", "ten"], "argument --steps: expected a whole number of at least 1, got 'ten'"),
    (TINY_TRAIN + ["--batch", "0"], "argument --batch: expected a whole number of at least 1"),
    (TINY_TRAIN + ["--seq-len", "0"], "argument --seq-len: expected a whole number from 1 to 65536"),
    (TINY_TRAIN + ["--seq-len", "65537"], "argument --seq-len: expected a whole number from 1 to 65536"),
    (TINY_TRAIN + ["--embed", "16385"], "argument --embed: expected a whole number from 1 to 16384"),
    (TINY_TRAIN + ["--layers", "0"], "argument --layers: expected a whole number from 1 to 256"),
    (TINY_TRAIN + ["--heads", "0"], "argument --heads: expected a whole number from 1 to 1024"),
    (TINY_TRAIN + ["--seed", "-1"], "argument --seed: expected a whole number from 0 to 4294967295"),
    (TINY_TRAIN + ["--seed", "1.5"], "argument --seed: expected a whole number"),
    (TINY_TRAIN + ["--eval-every", "0"], "argument --eval-every: expected a whole number of at least 1"),
    (TINY_TRAIN + ["--eval-batches", "0"], "argument --eval-batches: expected a whole number of at least 1"),
    (TINY_TRAIN + ["--checkpoint-every", "-3"], "argument --checkpoint-every: expected a whole number of at least"),
    (TINY_TRAIN + ["--sample-chars", "-3"], "argument --sample-chars: expected a whole number of at least 0"),
    (TINY_TRAIN + ["--checkpoint-dir", ""], "argument --checkpoint-dir: expected a folder name, got an empty"),
    (TINY_TRAIN + ["--data", ""], "argument --data: expected a file name, got an empty string"),
    # generate
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--length", "-5"],
     "argument --length: expected a whole number of at least 1, got '-5'"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--length", "0"],
     "argument --length: expected a whole number of at least 1"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--temperature", "nan"],
     "argument --temperature: expected a finite number above 0"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--temperature", "0"],
     "argument --temperature: expected a finite number above 0"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--top-k", "-1"],
     "argument --top-k: expected a whole number of at least 0"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--seed", "-1"],
     "argument --seed: expected a whole number from 0"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", ""], "argument --prompt: expected at least one"),
    (["generate", "--checkpoint", "", "--prompt", "s"], "argument --checkpoint: expected a file name"),
    (["generate", "--checkpoint", "absent.npz"], "give the text to continue: --prompt TEXT or --prompt-file FILE"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--prompt-file", "p.txt"],
     "give the text to continue: --prompt TEXT or --prompt-file FILE"),
    (["generate", "--checkpoint", "absent.npz", "--prompt", "s", "--num-samples", "-1"],
     "argument --num-samples: expected a whole number of at least 0"),
    # run
    (["run", "--quiet", "--vocab", "0"], "argument --vocab: expected a whole number from 1 to 1048576, got '0'"),
    (["run", "--quiet", "--seq-len", "0"], "argument --seq-len: expected a whole number from 1 to 65536"),
    (["run", "--quiet", "--batch", "0"], "argument --batch: expected a whole number of at least 1"),
    (["run", "--quiet", "--heads", "0"], "argument --heads: expected a whole number from 1 to 1024"),
    (["run", "--quiet", "--layers", "0"], "argument --layers: expected a whole number from 1 to 256"),
    (["run", "--quiet", "--embed", "0"], "argument --embed: expected a whole number from 1 to 16384"),
    (["run", "--quiet", "--seed", "-2"], "argument --seed: expected a whole number from 0"),
    # render and ir
    (["render", *TINY_MODEL, "--collapse", "0", "--out", "g.svg"], "argument --collapse: expected a whole number"),
    (["render", *TINY_MODEL, "--stage", "train", "--shards", "0", "--out", "g.svg"],
     "argument --shards: expected a whole number of at least 1"),
    (["render", *TINY_MODEL, "--shards", "2", "--out", "g.svg"],
     "--shards splits a training step: use it with --stage train or optimised"),
    (["render", *TINY_MODEL, "--collapse", "2", "--passes", "--out", "passes"],
     "--collapse draws one diagram collapsed; --passes draws every pass in full"),
    (["render", *TINY_MODEL, "--stage", "forward", "--passes", "--out", "passes"],
     "--passes draws what each pass did, and --stage forward runs no passes: leave --stage out"),
    (["render", *TINY_MODEL, "--out", "graph.txt"], "--out graph.txt: expected a file ending in .svg, .png, .pdf"),
    (["render", *TINY_MODEL, "--out", ""], "argument --out: expected a file or folder name"),
    (["ir", *TINY_MODEL, "--stage", "train", "--shards", "-2"], "argument --shards: expected a whole number"),
    (["ir", *TINY_MODEL, "--shards", "2"], "--shards splits a training step"),
    (["ir", "--stage", "train", "--shards", "3", "--batch", "4"],
     "cannot split this training step into 3 data-parallel shards: --batch 4 is not a multiple of 3"),
    # compare
    (["compare", *TINY_MODEL, "--repeats", "0", "--out", "c.html"],
     "argument --repeats: expected a whole number of at least 1, got '0'"),
    (["compare", *TINY_MODEL, "--repeats", "1", "--out", "missing/c.html"],
     "--out missing/c.html: cannot write into .*missing"),
    (["compare", *TINY_MODEL, "--repeats", "1", "--out", "."], "--out . is a folder"),
    (["compare", *TINY_MODEL, "--repeats", "1", "--vocab", "100", "--out", "c.html"],
     "unrecognized arguments: --vocab 100"),  # compare's vocabulary is fixed: an option it would ignore
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current folder holding only the tiny text, so anything a command creates shows."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text(TINY_TEXT, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("argv,message", REFUSED, ids=[f"{argv[0]}: {message[:48]}" for argv, message in REFUSED])
def test_a_bad_argument_is_refused_in_one_line_before_anything_runs(workdir, capsys, argv, message):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and re.match(r"graphgpt( \w+)?: error: ", lines[0]), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(path.name for path in workdir.iterdir()) == ["text.txt"]  # nothing created


def subcommands() -> dict:
    parser = build_parser()
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_is_checked_when_parsed():
    """Each option that takes a value has a checking type (a number in a range, or a non-empty string) or a
    fixed set of choices: none reaches a command unchecked."""
    unchecked = [f"{name} {action.option_strings[0]}" for name, command in subcommands().items()
                 for action in command._actions
                 if action.option_strings and action.nargs != 0 and action.type is None and action.choices is None]
    assert unchecked == []


@pytest.mark.parametrize("command", ["run", "train", "render", "ir", "compare", "generate"])
def test_help_states_each_numbers_range_and_the_real_default(command, capsys):
    """Each numeric option's help says what it accepts; `render --help` said `(default 64)` for --embed while
    render ran with 16."""
    parser = subcommands()[command]
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.help is None:
            continue
        shown = parser._get_formatter()._expand_help(action)
        assert "(default" in shown, f"{command} {action.option_strings[0]} does not say its default: {shown}"
        if action.default is not None:
            assert f"(default {action.default})" in shown, f"{command} {action.option_strings[0]}: {shown}"
        if isinstance(action.default, (int, float)) or getattr(action.type, "__qualname__", "").startswith("number"):
            assert re.search(r"a (whole|finite) number", shown), f"{command} {action.option_strings[0]}: {shown}"
    with pytest.raises(SystemExit) as helped:
        main([command, "--help"])
    assert helped.value.code == 0 and "usage: graphgpt " + command in capsys.readouterr().out


def test_compare_refuses_bad_sizes_before_measuring():
    from graphgpt.compare import compare

    for arguments, message in ((dict(repeats=0), "repeats must be a whole number of at least 1, got 0"),
                               (dict(lengths=()), "lengths must be a non-empty list"),
                               (dict(layer_counts=(1, 0)), "layer_counts must be a non-empty list"),
                               (dict(embed=10, heads=3), r"embed \(10\) must be divisible by heads \(3\)")):
        with pytest.raises(ValueError, match=message):
            compare(**arguments)
