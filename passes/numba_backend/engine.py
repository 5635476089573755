"""Turning a generated kernel's source into a function a schedule calls: compiled by Numba on its first call,
once per process and, through Numba's disk cache, once per machine.

Numba caches compiled code beside the file a function was defined in (`cache=True`), so every source is written
to a file of the kernel cache folder named by a hash of the source, `kernel_<hash>.py`, and imported from there;
Numba keeps the machine code in that folder's `__pycache__`. A second process importing the same source finds
the file unchanged and loads the machine code instead of compiling again. The folder is
`$GRAPHGPT_KERNEL_CACHE`, else `~/.cache/graphgpt/kernels`; where it cannot be written, a temporary folder of
this process is used instead (each process then compiles afresh).

Within a process, each source is imported once: nodes whose kernels have the same source (every layer's layer
norm) share one function and its compiled code. The table of imported kernels is process-wide, like a cache
of functools.lru_cache: keyed by the source itself, whose compiled code never changes, and behind a lock.

A kernel module may import another module of this kind (the helpers every kernel calls: source_text.py) by its
module name, `graphgpt_kernel_<hash>`: register_module makes that source known, and load_kernel imports it
before the kernel that needs it. Named by a hash of its text, a changed helper module is another module, and the
kernels importing it other sources: Numba's cache, which does not follow a function's calls into other files,
never pairs a kernel with a helper it was not compiled with.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

CACHE_FOLDER_VARIABLE = "GRAPHGPT_KERNEL_CACHE"

_imported: dict[str, ModuleType] = {}  # source -> its module, imported (see the module docstring)
_registered: dict[str, str] = {}  # module name -> source, of the modules kernel modules import (register_module)
_imported_lock = threading.Lock()
_IMPORT_LINE = re.compile(r"^from (graphgpt_kernel_[0-9a-f]+) import ", re.MULTILINE)
_fallback_folder: Optional[Path] = None  # this process's temporary folder, when the cache folder is not writable


def numba_available() -> bool:
    """Whether the numba package is installed (without importing it: that takes a quarter of a second)."""
    return importlib.util.find_spec("numba") is not None


def kernel_cache_folder() -> Path:
    """Where kernel sources and Numba's compiled code for them are kept: $GRAPHGPT_KERNEL_CACHE, else
    ~/.cache/graphgpt/kernels."""
    configured = os.environ.get(CACHE_FOLDER_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "graphgpt" / "kernels"


def _write_once(folder: Path, name: str, source: str) -> Path:
    """The file `name` in `folder` holding `source`, written (atomically: never a partial file another process
    could import) unless it already holds it. An unchanged file keeps its modification time, which Numba's cache
    checks."""
    path = folder / name
    try:
        if path.read_text(encoding="utf-8") == source:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(source)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def kernel_file_name(source: str) -> str:
    """The name of the file holding `source` in the kernel cache folder: named by a hash of the source."""
    return f"kernel_{hashlib.sha256(source.encode()).hexdigest()[:24]}.py"


def cached_kernel_files() -> frozenset[str]:
    """The names of the kernel sources in the cache folder now: a kernel whose file is not among them has no
    machine code on this machine yet, and is compiled at its first call (~0.5 s)."""
    try:
        return frozenset(path.name for path in kernel_cache_folder().glob("kernel_*.py"))
    except OSError:
        return frozenset()


def _source_file(source: str) -> Path:
    """The file of the kernel cache folder holding `source` (or of this process's fallback folder)."""
    global _fallback_folder
    name = kernel_file_name(source)
    try:
        return _write_once(kernel_cache_folder(), name, source)
    except OSError:
        if _fallback_folder is None:
            _fallback_folder = Path(tempfile.mkdtemp(prefix="graphgpt-kernels-"))
        return _write_once(_fallback_folder, name, source)


def module_name(source: str) -> str:
    """The name the module of `source` is imported under: `graphgpt_kernel_<hash>`."""
    return f"graphgpt_{kernel_file_name(source)[:-len('.py')]}"


def register_module(source: str) -> str:
    """Make the module `source` importable by kernel modules (`from <its name> import ...`); returns its name."""
    name = module_name(source)
    with _imported_lock:
        _registered[name] = source
    return name


def imported_sources(source: str) -> list[str]:
    """The sources of the registered modules `source` imports (and those they import), each once: what a reader
    needs beside a kernel's own text."""
    with _imported_lock:  # the registry is read as register_module writes it
        return _imported_sources(source)


def _imported_sources(source: str) -> list[str]:
    found: list[str] = []
    for needed in _IMPORT_LINE.findall(source):
        text = _registered.get(needed)
        if text is not None and text not in found:
            found += [text] + [inner for inner in _imported_sources(text) if inner not in found]
    return found


def _import(source: str) -> ModuleType:
    """The module of `source`, imported from its file once (the modules it imports first); the caller holds the
    lock."""
    module = _imported.get(source)
    if module is not None:
        return module
    name = module_name(source)
    for needed in _IMPORT_LINE.findall(source):
        if needed not in _registered:
            raise ImportError(f"kernel module {name} imports {needed}, which no register_module call made known")
        _import(_registered[needed])
    path = _source_file(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered as an imported module: Numba finds a cached function's globals through its module name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _imported[source] = module
    return module


def load_kernel(source: str, entry: str) -> Callable:
    """The function `entry` of the kernel module `source`: a Numba dispatcher that compiles (or loads from the disk
    cache) on its first call, for the types of that call's arrays."""
    with _imported_lock:
        return getattr(_import(source), entry)
