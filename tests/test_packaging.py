"""Installed names: graphgpt, graphgpt.ir and graphgpt.passes, with no bare `ir` or `passes` package."""

import importlib.util
from pathlib import Path

import graphgpt

ROOT = Path(__file__).resolve().parent.parent


def test_ir_and_passes_install_under_graphgpt():
    assert Path(graphgpt.ir.__file__).resolve() == ROOT / "ir" / "__init__.py"
    assert Path(graphgpt.passes.__file__).resolve() == ROOT / "passes" / "__init__.py"
    assert importlib.util.find_spec("ir") is None
    assert importlib.util.find_spec("passes") is None


def test_every_package_folder_is_listed_in_pyproject():
    import ast
    import re

    # tomllib is Python 3.11+; the project supports 3.10, and this line is a plain list of strings.
    line = re.search(r"^packages = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    listed = set(ast.literal_eval(line))
    folders = {"graphgpt": ROOT / "graphgpt", "graphgpt.ir": ROOT / "ir", "graphgpt.passes": ROOT / "passes"}
    found = set()
    for package, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((package, *relative)))
    assert found == listed
