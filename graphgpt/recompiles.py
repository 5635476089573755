"""The cache of a lazy compile (graphgpt/lazy.py) explains itself: what it holds (`fast.cache`, a table of
CacheEntry), and, when asked, why it compiles again or drops an entry, in one line on standard error each:

    graphgpt: recompiling forward: input 0 'tokens' changed i64[2,16] -> i64[2,17]
    graphgpt: recompiling training step: model changed: 'blocks.0' of the model was replaced since compile
    graphgpt: evicting forward entry tokens: i64[2,8] (least recently used; cache_size_limit=8)

`graphgpt.explain_recompiles(True)` turns these lines on, `False` off, `None` back to the environment variable
GRAPHGPT_EXPLAIN_RECOMPILES (`1` for on; read at each recompile, so it may be set after import). The setting is
one process-wide value behind a lock (not a ContextVar): it is a debugging switch, and a recompile happens in
whichever thread calls the model, also threads started before the switch was turned on, which a ContextVar set
in one thread would not reach.

The lines are printed to sys.stderr (looked up at each line), not sent through `logging`: enabling them must
not add handlers or levels to a logger, which is process-wide state of the logging module and of the
application around us, and a logging configuration must not be able to swallow or double them; capsys, or
contextlib.redirect_stderr, captures them.

This module also holds the pure decisions of the cache: an entry's signature as text, which sizes of a compiled
entry are symbolic, the closest entry to a new signature, and which axes (`batch`: 0, `seq`: 1) two signatures
differ in, for automatic dynamic sizes.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

from .dynamic import DYNAMIC_AXES, dynamic_names

ENVIRONMENT_VARIABLE = "GRAPHGPT_EXPLAIN_RECOMPILES"
DEFAULT_CACHE_SIZE_LIMIT = 8  # entries per lazily compiled model, as torch.compile's cache_size_limit
AXES = tuple(DYNAMIC_AXES)  # the names `dynamic=` takes: axis 0 and axis 1 of every input


class _ExplainSetting:
    """explain_recompiles's value: True, False, or None for the environment variable's. Lock-protected."""

    def __init__(self):
        self._lock = threading.Lock()
        self._value: Optional[bool] = None

    def swap(self, value: Optional[bool]) -> Optional[bool]:
        with self._lock:
            previous, self._value = self._value, value
        return previous

    def enabled(self) -> bool:
        with self._lock:
            value = self._value
        if value is not None:
            return value
        return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


_SETTING = _ExplainSetting()


def explain_recompiles(enabled: Optional[bool] = True) -> Optional[bool]:
    """Print one line on standard error each time a lazily compiled model (`graphgpt.compile(model)`) compiles
    again, saying what changed from its closest cached entry (an input's type, the model), and each time it drops
    an entry past its cache_size_limit. True turns the lines on in every thread, False off, None follows the
    environment variable GRAPHGPT_EXPLAIN_RECOMPILES (`1`: on). Returns the previous setting, to restore it:

        previous = graphgpt.explain_recompiles(True)
        ...
        graphgpt.explain_recompiles(previous)
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"explain_recompiles takes True, False or None, got {enabled!r}")
    return _SETTING.swap(enabled)


def explain(line: str) -> None:
    """Print `line` on standard error if recompiles are explained now."""
    if _SETTING.enabled():
        print(f"graphgpt: {line}", file=sys.stderr, flush=True)


def model_change(message: str) -> str:
    """The what of a ModelChangedError's (or a parameter's InputError's) message, without its advice to compile
    again: "'blocks.0' of the model was replaced since compile"."""
    return message.split("; ")[0].split(": the ")[0]


# ---- the cache, as a user sees it ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheEntry:
    """One compiled signature of a lazily compiled model: `number` counts the compiles of that model (1 is the
    first), `signature` is its inputs' types (`tokens: i64[2,16]`; a symbolic size prints as B or T), `symbolic`
    names its symbolic axes (("batch", "seq") when one trace serves every size; () for a static entry)."""

    number: int
    kind: str  # "forward" or "training step"
    signature: str
    compile_seconds: float
    runs: int
    symbolic: tuple[str, ...]


class CacheTable(list):
    """The entries of a lazy compile's cache (CacheEntry), least recently used first, the first to be evicted;
    str() is a small table."""

    def __init__(self, entries: Sequence[CacheEntry], limit: int):
        super().__init__(entries)
        self.limit = limit

    def __str__(self) -> str:
        title = f"compile cache: {len(self)} of at most {self.limit} entries, least recently used first"
        if not self:
            return f"{title}\n  (nothing compiled yet)"
        header = ("#", "kind", "signature", "symbolic", "compile s", "runs")
        rows = [(str(entry.number), entry.kind, entry.signature, ", ".join(entry.symbolic) or "-",
                 f"{entry.compile_seconds:.3f}", str(entry.runs)) for entry in self]
        widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
        right = {0, 4, 5}  # numbers align right
        lines = ["  " + "  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                                  for column, (cell, width) in enumerate(zip(row, widths))).rstrip()
                 for row in (header, *rows)]
        return "\n".join([title, *lines])


# ---- decisions over signatures -----------------------------------------------------------------------------------

def signature_text(compiled) -> str:
    """`tokens: i64[2,16], targets: i64[2,16]`: a compiled entry's inputs, as its IR names and types them."""
    return ", ".join(f"{value.name}: {value.type}" for value in compiled.program.inputs)


def symbolic_axes(compiled) -> tuple[str, ...]:
    """The axes some input of `compiled` has a symbolic size on ("batch" for axis 0, "seq" for 1, else
    "axis k"), read from its compiled input types, so it says what the trace made, not what was asked."""
    axes = sorted({axis for value in compiled.program.inputs for axis, size in enumerate(value.type.shape)
                   if not isinstance(size, int)})
    return tuple(AXES[axis] if axis < len(AXES) else f"axis {axis}" for axis in axes)


def normalize_dynamic(dynamic) -> Optional[tuple[str, ...]]:
    """`dynamic=` as the axis names every compile marks: None stays None (automatic: static first, then dynamic in
    the axes that changed); otherwise as compile reads it (graphgpt/dynamic.py), in AXES' order."""
    if dynamic is None:
        return None
    names = dynamic_names(dynamic)
    return tuple(name for name in AXES if name in names)


def dynamic_option(names: Sequence[str]):
    """The `dynamic=` keyword compile(model, *examples, ...) is given for these axis names (None: pass none)."""
    if not names:
        return None
    return names[0] if len(names) == 1 else tuple(names)


Signature = tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) per input


def differing_axes(old: Signature, new: Signature) -> Optional[tuple[str, ...]]:
    """The axis names two signatures differ in, when they differ only in sizes of axis 0 and/or 1 of their inputs
    (same count, ranks and dtypes); None when they differ in anything else."""
    if len(old) != len(new):
        return None
    axes: set[int] = set()
    for (old_shape, old_dtype), (new_shape, new_dtype) in zip(old, new):
        if old_dtype != new_dtype or len(old_shape) != len(new_shape):
            return None
        changed = {axis for axis, (a, b) in enumerate(zip(old_shape, new_shape)) if a != b}
        if changed - {0, 1}:
            return None
        axes |= changed
    return tuple(AXES[axis] for axis in sorted(axes))


def distance(old: Signature, new: Signature, dynamic: Sequence[str] = ()) -> tuple[int, int, int, int]:
    """How far an entry traced at `old` (dynamic in the axes `dynamic`) is from `new`: input count first, then
    inputs of another rank or dtype, then sizes on the axes it is not dynamic in; of two as far, the one dynamic
    in more axes is nearer."""
    if len(old) != len(new):
        return (abs(len(old) - len(new)), 0, 0, 0)
    kinds = sum(a[1] != b[1] or len(a[0]) != len(b[0]) for a, b in zip(old, new))
    free = {AXES.index(name) for name in dynamic}
    sizes = sum(x != y for a, b in zip(old, new) if len(a[0]) == len(b[0])
                for axis, (x, y) in enumerate(zip(a[0], b[0])) if axis not in free)
    return (0, kinds, sizes, -len(free))
