"""The newcomer's path: the README's two commands (and that .ci/run runs exactly the test one), the `graphgpt`
command line, and every script in examples/ runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from graphgpt.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    main_job, tests = readme_commands()[:2]
    assert "graphgpt train" in main_job and "pip install" in main_job
    assert "pytest" in tests and "pip install" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines, ".ci/run must run exactly the README's test command"


def test_cli_run_compiles_prints_and_agrees(capsys):
    assert main(["run", "--layers", "1", "--embed", "16", "--heads", "2", "--seq-len", "8", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "# graph (" in out and "layer_norm" in out
    assert "max |compiled - eager| = 0" in out


def test_cli_reports_bad_options_without_traceback(capsys):
    assert main(["run", "--embed", "10", "--heads", "3", "--quiet"]) == 2
    assert "divisible by num_heads" in capsys.readouterr().err


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0 and "run" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "examples").glob("*.py")))
def test_example_runs(script):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
