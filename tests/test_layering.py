"""The layering ir <- passes <- graphgpt (DESIGN.md, "Layers"), checked at import time and in the source.

At import time: a fresh interpreter importing graphgpt.ir (or graphgpt.passes) must load nothing of the layers
above it; graphgpt/__init__.py is lazy so that running it on the way to a subpackage loads nothing either.
In the source: every import of every module of ir/ and passes/ (top level and inside functions) respects the
layering, and the import graph of those modules has no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

import graphgpt

ROOT = Path(__file__).resolve().parent.parent
# The folders of the two lower layers and the package names they install as (pyproject's package-dir).
LAYER_FOLDERS = {"graphgpt.ir": ROOT / "ir", "graphgpt.passes": ROOT / "passes"}


def modules_loaded_by(statement: str) -> list[str]:
    """The graphgpt modules a fresh interpreter has loaded after running `statement`: a fresh one, because this
    test process has long since imported everything."""
    report = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith('graphgpt'))))"
    program = f"{statement}\n{report}"
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules_above(statement: str, *allowed_packages: str) -> list[str]:
    """The graphgpt modules, other than the lazy graphgpt/__init__.py itself and the allowed packages, that a fresh
    interpreter loads for `statement`."""
    return [module for module in modules_loaded_by(statement)
            if module != "graphgpt" and not any(within(module, package) for package in allowed_packages)]


def test_importing_ir_loads_nothing_above_it():
    above = modules_above("import graphgpt.ir", "graphgpt.ir")
    assert not above, f"importing graphgpt.ir also loaded {above}"


def test_importing_passes_loads_nothing_above_it():
    above = modules_above("import graphgpt.passes", "graphgpt.ir", "graphgpt.passes")
    assert not above, f"importing graphgpt.passes also loaded {above}"


# What graphgpt exported before it became lazy: each must still be there, and the same object as its definition.
EAGER_EXPORTS = {
    "Compiled": "compiler", "InputError": "compiler", "compile": "compiler", "trace": "compiler",
    "ExecutionError": "passes.schedule", "NumericalError": "passes.schedule", "GradientReport": "gradcheck",
    "check_gradients": "gradcheck", "GraphError": "ir", "ShapeError": "ir", "VerificationError": "ir",
    "manual_seed": "random", "Parameter": "tensor", "Tensor": "tensor", "TraceError": "tracing", "no_grad": "tracing",
}
EAGER_SUBPACKAGES = ["ir", "nn", "optim", "passes"]


def test_every_public_name_resolves_lazily():
    assert modules_loaded_by("import graphgpt") == ["graphgpt"]
    assert set(EAGER_EXPORTS) | set(EAGER_SUBPACKAGES) <= set(graphgpt.__all__)
    for name, module in EAGER_EXPORTS.items():
        assert getattr(graphgpt, name) is getattr(sys.modules[f"graphgpt.{module}"], name), name
    for name in EAGER_SUBPACKAGES:
        assert getattr(graphgpt, name) is sys.modules[f"graphgpt.{name}"], name
    assert set(graphgpt.__all__) <= set(dir(graphgpt))
    assert graphgpt.render is sys.modules["graphgpt.render"]  # any submodule, as when everything was eager
    with pytest.raises(AttributeError, match="no_such_name"):
        graphgpt.no_such_name
    namespace: dict = {}
    exec("from graphgpt import *", namespace)
    assert set(graphgpt.__all__) <= set(namespace)


# --- the static check -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement of one module, resolved to the module it imports."""

    importer: str
    imported: str
    line: int
    type_checking_only: bool  # under `if TYPE_CHECKING:`: never runs, so it cannot close an import cycle

    def __str__(self) -> str:
        where = " (under TYPE_CHECKING)" if self.type_checking_only else ""
        return f"{self.importer} imports {self.imported} at line {self.line}{where}"


def layer_modules() -> dict[str, Path]:
    """Module name -> source file, for every module of ir/ and passes/."""
    modules = {}
    for package, folder in LAYER_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def is_type_checking_guard(statement: ast.stmt) -> bool:
    test = getattr(statement, "test", None) if isinstance(statement, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, known_modules: set[str]) -> list[Import]:
    """Every import in a module's source, wherever it sits, each resolved to an absolute module name.

    `from P import name` imports P, unless P.name is itself a module (`from . import attrs`), then P.name. The
    parent packages Python imports implicitly on the way are not counted: they are not what the code asked for.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    type_checking_lines = {
        line
        for statement in ast.walk(tree) if is_type_checking_guard(statement)
        for child in statement.body for inner in ast.walk(child) if hasattr(inner, "lineno")
        for line in [inner.lineno]
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known_modules else base
                       for alias in node.names]
        else:
            continue
        found.extend(Import(module, target, node.lineno, node.lineno in type_checking_lines)
                     for target in dict.fromkeys(targets))
    return found


def all_layer_imports() -> list[Import]:
    modules = layer_modules()
    return [found for module, path in modules.items() for found in imports_of(module, path, set(modules))]


def is_top_layer(module: str) -> bool:
    return within(module, "graphgpt") and not within(module, "graphgpt.ir") and not within(module, "graphgpt.passes")


def test_ir_imports_neither_passes_nor_the_top_layer():
    offending = [str(found) for found in all_layer_imports() if within(found.importer, "graphgpt.ir")
                 and (within(found.imported, "graphgpt.passes") or is_top_layer(found.imported))]
    assert not offending, "ir/ must import only itself:\n  " + "\n  ".join(offending)


def test_passes_import_nothing_of_the_top_layer():
    offending = [str(found) for found in all_layer_imports()
                 if within(found.importer, "graphgpt.passes") and is_top_layer(found.imported)]
    assert not offending, "passes/ must import only ir/ and passes/:\n  " + "\n  ".join(offending)


def test_the_static_check_sees_the_imports_it_must():
    """Guards the checks above against passing vacuously (a resolver that finds no imports finds no fault)."""
    edges = {(found.importer, found.imported) for found in all_layer_imports()}
    expected = [
        ("graphgpt.ir.chain_rule", "graphgpt.ir.ops.registry"),  # from .ops.registry import get_op
        ("graphgpt.ir.ops.shape_ops", "graphgpt.ir.ops.attrs"),  # from . import attrs as A: a submodule
        ("graphgpt.ir.builder", "graphgpt.ir.ops"),              # from .ops import get_op: the package
        ("graphgpt.passes.manager", "graphgpt.ir"),              # from graphgpt.ir import Graph, verify
        ("graphgpt.ir.ops.fused", "graphgpt.ir.chain_rule"),     # from ..chain_rule import ...: may sit in a function
    ]
    missed = [f"{importer} -> {imported}" for importer, imported in expected if (importer, imported) not in edges]
    assert not missed, "the static import resolver missed: " + ", ".join(missed)


def test_ir_and_passes_have_no_import_cycle():
    imports = [found for found in all_layer_imports() if not found.type_checking_only]
    graph = nx.DiGraph()
    for found in imports:
        graph.add_edge(found.importer, found.imported, line=found.line)
    cycles = sorted(nx.simple_cycles(graph))
    described = ["".join(f"{importer} -[line {graph.edges[importer, imported]['line']}]-> "
                         for importer, imported in zip(cycle, cycle[1:] + cycle[:1])) + cycle[0] for cycle in cycles]
    assert not cycles, "import cycles in ir/ and passes/:\n  " + "\n  ".join(described)
