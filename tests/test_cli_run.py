"""graphgpt run: the GPT's forward compiled on first call at each of --seq-lens, checked against eager, with
--explain printing the recompile lines and the cache of compiled signatures."""

import pytest

import graphgpt
from graphgpt.cli import main

RUN = ["run", "--quiet", "--layers", "1", "--embed", "16", "--heads", "2", "--seq-len", "8", "--batch", "2"]


def test_cli_run_explain_prints_the_cache(capsys):
    assert main([*RUN, "--seq-lens", "4,8,4", "--explain"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("max |compiled - eager| = 0") == 3
    assert "compile cache:" in captured.out and "tokens: i64[2,4]" in captured.out
    assert "graphgpt: recompiling forward: input 0 'tokens' changed i64[2,4] -> i64[2,8]" in captured.err
    assert graphgpt.explain_recompiles(None) is None  # the command put the setting back
    assert main(RUN) == 0
    assert "compile cache:" not in capsys.readouterr().out


@pytest.mark.parametrize("value,says", [
    ("0", "argument --seq-lens: expected whole numbers from 1 to 65536 separated by commas, got '0'"),
    ("8,x", "argument --seq-lens: expected whole numbers from 1 to 65536 separated by commas, got '8,x'"),
    ("", "argument --seq-lens: expected whole numbers from 1 to 65536 separated by commas, got ''"),
])
def test_cli_run_refuses_bad_sequence_lengths_in_one_line(capsys, value, says):
    with pytest.raises(SystemExit) as refused:
        main([*RUN, "--seq-lens", value])
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"graphgpt run: error: {says}"
