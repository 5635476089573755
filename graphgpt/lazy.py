"""Lazy compile: `graphgpt.compile(model)` without example inputs returns a LazyCompiled at once; its first call
traces, at that call's inputs, with the eager form `compile(model, *inputs, ...)`, and it keeps one compiled
entry per input signature (number of inputs, shapes, dtypes), as torch.compile does.

    fast = graphgpt.compile(model)            # nothing traced yet
    logits = fast(tokens)                     # compile(model, tokens), cached, run
    logits = fast(other_tokens)               # an entry fits (Compiled.signature_mismatch is None): no trace
    print(fast.cache)                         # the entries: signature, compile seconds, runs, symbolic axes
    graphgpt.explain_recompiles(True)         # one line on stderr per recompile (graphgpt/recompiles.py)

    step = graphgpt.compile(model, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3))
    loss = step(tokens, targets)              # a training step; step.grads are this run's gradients

    @graphgpt.compile                         # a plain function; @graphgpt.compile(dynamic=True) takes options
    def f(x): ...

`dynamic=`: False compiles one entry per signature, always; True (or "batch", "seq", ("batch", "seq")) passes
those axes to every compile, whose graph then serves every size of them; None (the default) is automatic: the
first signature compiles static, and a later one that differs from an entry only in sizes of axis 0 (batch)
and/or axis 1 (seq) compiles with `dynamic=` those axes (and those of that entry), so the new entry serves every
such size. At most `cache_size_limit` entries are kept (8 by default), the least recently used dropped first.

Before an entry runs, what Compiled.run would refuse about the model (graphgpt/guards.py: a replaced sub-module,
a changed Python attribute, a parameter of another shape, a changed optimizer hyperparameter) is checked first,
so nothing has run (no training step has updated a parameter) when the entry is found stale: it is dropped and
the model compiled again, with a line saying why when recompiles are explained.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import OrderedDict
from operator import attrgetter, is_
from typing import Callable, Optional

import numpy as np

from graphgpt.ir import ShapeError, TensorType

from . import compiler
from .compiler import Compiled, InputError
from .trace_entry import default_input_names, example_array
from .guards import ModelChangedError
from .nn.module import Module
from .recompiles import (AXES, DEFAULT_CACHE_SIZE_LIMIT, CacheEntry, CacheTable, Signature, differing_axes,
                         distance, dynamic_option, explain, model_change, normalize_dynamic, signature_text,
                         symbolic_axes)

NOTHING_COMPILED = "nothing compiled yet: call it with inputs first"


def shape_text(array: np.ndarray) -> str:
    """`i64[2,8]`: an input array's type as the text IR writes it."""
    return str(TensorType.of(array))
_type_of = attrgetter("type")


class _Entry:
    """A compiled signature and what the cache knows of it (`runs` changes under LazyCompiled._lock, `types`
    under its Compiled's run lock)."""

    __slots__ = ("compiled", "signature", "dynamic", "compile_seconds", "number", "runs", "types")

    def __init__(self, compiled: Compiled, signature: Signature, dynamic: tuple[str, ...], compile_seconds: float):
        self.compiled, self.signature, self.dynamic = compiled, signature, dynamic
        self.compile_seconds, self.number, self.runs = compile_seconds, 0, 0
        self.types: Optional[list] = None  # the bound tensors' type objects when the last check passed


def stale_reason(entry: _Entry) -> Optional[str]:
    """Why `entry` may not run now because the model or optimizer changed since it was traced, or None. It checks
    what Compiled.run checks before running anything (the binding guard, then the parameters' types), under that
    Compiled's run lock; nothing runs, and the guard follows a tensor replaced by another of its type as a run
    would. The types are compared only when some bound tensor's type object is not the one the last check passed
    (assigning `.data` makes a new one). On the 6-layer GPT of guards.AttributeWatch this check takes 30-45 us
    per run (comparing every parameter's type each time took 120 us), next to a 6.5 ms forward at (2, 16)."""
    compiled = entry.compiled
    with compiled._run_lock:
        try:
            compiled._bound = compiled._guard.current(compiled._bound)
            types = list(map(_type_of, compiled._bound))
            if entry.types is None or not all(map(is_, types, entry.types)):
                compiled._param_arrays()
                entry.types = types
        except (ModelChangedError, InputError) as error:
            return str(error)
    return None


class LazyCompiled:
    """A model (or function) compiled on first call, one entry per input signature: see this module's docstring.
    Attributes of a Compiled (graph, graphs, ir, report(), render(...), grads, memory_timeline(), stages, ...)
    are those of the entry this thread used last (of any thread's, if this one ran none).

    Several threads may call one LazyCompiled. Finding an entry takes a short lock; compiling takes another, so
    compiles happen one at a time and a signature two threads ask for at once is compiled once (the second
    finds the first's entry when it gets the lock). Running is serialised per entry by Compiled.run."""

    def __init__(self, model: Callable, options: dict, dynamic=None,
                 cache_size_limit: Optional[int] = DEFAULT_CACHE_SIZE_LIMIT):
        if cache_size_limit is None:
            cache_size_limit = DEFAULT_CACHE_SIZE_LIMIT
        if isinstance(cache_size_limit, bool) or not isinstance(cache_size_limit, (int, np.integer)) \
                or cache_size_limit < 1:
            raise ValueError(f"cache_size_limit must be a whole number of at least 1, got {cache_size_limit!r}")
        self.model = model
        self.options = dict(options)
        self.cache_size_limit = int(cache_size_limit)
        self._dynamic = normalize_dynamic(dynamic)
        self.kind = "forward" if options.get("loss") is None else "training step"
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._compiles = 0
        self._latest: Optional[_Entry] = None
        self._lock = threading.Lock()  # the entries, their counts and _latest
        self._compile_lock = threading.Lock()  # one compile at a time (they share the model and the optimizer)
        self._thread = threading.local()  # .entry: the entry this thread used last

    # ---- running --------------------------------------------------------------------------------------------------
    def run(self, *inputs):
        """Run the entry whose signature fits `inputs`, compiling one first if none does (or if the model
        changed since it was compiled); returns what Compiled.run returns."""
        entry = self._entry_for(inputs)
        result = entry.compiled.run(*inputs)
        with self._lock:
            entry.runs += 1
        return result

    __call__ = run

    def _entry_for(self, inputs) -> _Entry:
        entry = self._fitting(inputs)
        if entry is not None and stale_reason(entry) is None:
            return self._use(entry)
        with self._compile_lock:
            stale: Optional[tuple[_Entry, str]] = None
            while (entry := self._fitting(inputs)) is not None:
                reason = stale_reason(entry)
                if reason is None:  # compiled by another thread meanwhile, or followed a harmless change
                    return self._use(entry)
                with self._lock:
                    self._entries.pop(entry.number, None)
                stale = (entry, reason)
            return self._use(self._compile(self._arrays(inputs), stale))

    def _fitting(self, inputs) -> Optional[_Entry]:
        """The most recently used entry that takes `inputs` as compiled, or None."""
        with self._lock:
            entries = list(reversed(self._entries.values()))
        return next((entry for entry in entries if entry.compiled.signature_mismatch(inputs) is None), None)

    def _use(self, entry: _Entry) -> _Entry:
        with self._lock:
            if entry.number in self._entries:
                self._entries.move_to_end(entry.number)
            self._latest = entry
        self._thread.entry = entry
        return entry

    # ---- compiling ------------------------------------------------------------------------------------------------
    def _arrays(self, inputs) -> list[np.ndarray]:
        """The inputs as arrays a graph can take, or a one-line InputError: an input that is not one, or a count
        the model's forward (or a training step: inputs, then targets) cannot take."""
        loss = self.options.get("loss")
        count = len(inputs) - (loss is not None)
        if loss is not None and len(inputs) < 2:
            raise InputError(f"a training step takes the model's inputs and then the targets, got {len(inputs)} "
                             f"input(s): call it as step(tokens, targets)")
        if not inputs:
            raise InputError("a lazily compiled model traces at its inputs: call it with at least one")
        target = self.model.forward if isinstance(self.model, Module) else self.model
        try:
            parameters = inspect.signature(target)
        except (TypeError, ValueError):
            parameters = None
        if parameters is not None:
            try:
                parameters.bind(*range(count))
            except TypeError:
                name = getattr(target, "__qualname__", type(target).__name__)
                listed = ", ".join(str(parameter.replace(annotation=inspect.Parameter.empty))
                                   for parameter in parameters.parameters.values())
                raise InputError(f"{name}({listed}) cannot take {count} input(s)"
                                 + (" (the last input of a training step is the targets)" if loss else "")) from None
        names = default_input_names(self.model, count) + (["targets"] if loss is not None else [])
        arrays = []
        for position, (name, data) in enumerate(zip(names, inputs)):
            try:
                array = np.asarray(example_array(data), order="C")
                TensorType.of(array)
            except (ShapeError, ValueError, TypeError) as error:
                raise InputError(f"input {position} ({name!r}) cannot be a graph input: {error}") from None
            arrays.append(array)
        return arrays

    def _plan(self, signature: Signature, arrays: list) -> tuple[tuple[str, ...], Optional[str]]:
        """The axes to compile `signature` dynamic in, and the line explaining the recompile (None for the first
        compile): what changed from the closest entry, preferring, when automatic, one it may go dynamic from."""
        with self._lock:
            entries = list(reversed(self._entries.values()))
        if not entries:
            return self._dynamic or (), None
        dims = self._dynamic or ()
        if self._dynamic is None:
            candidates = [entry for entry in entries if differing_axes(entry.signature, signature)]
            entries = candidates or entries
        closest = min(entries, key=lambda entry: distance(entry.signature, signature, entry.dynamic))
        line = f"recompiling {self.kind}: {closest.compiled.signature_mismatch(arrays) or 'a new signature'}"
        changed = differing_axes(closest.signature, signature) if self._dynamic is None else None
        if changed:  # automatic, and only sizes of axes 0 and 1 changed: those (and the entry's) go dynamic
            dims = tuple(name for name in AXES if name in {*closest.dynamic, *changed})
            line += f" (compiling dynamic in {', '.join(dims)})"
        return dims, line

    def _compile(self, arrays: list, stale: Optional[tuple[_Entry, str]]) -> _Entry:
        signature = tuple((array.shape, str(TensorType.of(array).dtype)) for array in arrays)
        if stale is not None:  # the model changed: compile this signature as the dropped entry was
            dims, line = stale[0].dynamic, f"recompiling {self.kind}: model changed: {model_change(stale[1])}"
        else:
            dims, line = self._plan(signature, arrays)
        if line is not None:
            explain(line)
        options = dict(self.options)
        if dims:
            options["dynamic"] = dynamic_option(dims)
        started = time.perf_counter()
        try:
            compiled = compiler.compile(self.model, *arrays, **options)
        except (ShapeError, ValueError) as error:  # the model cannot take these inputs (a TraceError is no input's)
            types = ", ".join(f"{shape_text(array)}" for array in arrays)
            reason = " ".join(str(error).split())  # one line: the IR's "\n  at <source line>" joins it
            raise InputError(f"cannot compile the {self.kind} for inputs ({types}): {reason}") from None
        entry = _Entry(compiled, signature, dims, time.perf_counter() - started)
        with self._lock:
            self._compiles += 1
            entry.number = self._compiles
            self._entries[entry.number] = entry
            evicted = [self._entries.popitem(last=False)[1] for _ in range(len(self._entries) -
                                                                           self.cache_size_limit)]
        for old in evicted:
            explain(f"evicting {self.kind} entry {signature_text(old.compiled)} (least recently used; "
                    f"cache_size_limit={self.cache_size_limit})")
        return entry

    # ---- what it holds --------------------------------------------------------------------------------------------
    @property
    def cache(self) -> CacheTable:
        """The compiled entries, least recently used first: a list of CacheEntry whose str() is a table."""
        with self._lock:
            entries = [CacheEntry(entry.number, self.kind, signature_text(entry.compiled), entry.compile_seconds,
                                  entry.runs, symbolic_axes(entry.compiled)) for entry in self._entries.values()]
        return CacheTable(entries, self.cache_size_limit)

    @property
    def latest(self) -> Compiled:
        """The Compiled this thread ran last (any thread's, if this one ran none)."""
        entry = getattr(self._thread, "entry", None) or self._latest
        if entry is None:
            raise RuntimeError(NOTHING_COMPILED)
        return entry.compiled

    def __repr__(self) -> str:
        name = type(self.model).__name__ if isinstance(self.model, Module) else \
            getattr(self.model, "__qualname__", repr(self.model))
        with self._lock:
            count = len(self._entries)
        return f"<graphgpt.LazyCompiled {self.kind} of {name}: {count} compiled signature(s)>"


def _delegate(name: str) -> property:
    def get(self: LazyCompiled):
        return getattr(self.latest, name)

    get.__doc__ = f"Compiled.{name} of the entry this thread ran last (see LazyCompiled.latest)."
    return property(get)


for _name in ("graph", "graphs", "ir", "stages", "split", "grads", "program", "bindings", "input_types",
              "planned_bytes", "gradient_names", "report", "render", "render_passes", "memory_timeline"):
    setattr(LazyCompiled, _name, _delegate(_name))
del _name


def lazy_compile(model: Optional[Callable], options: dict, dynamic, cache_size_limit: Optional[int]):
    """compile() without example inputs: a LazyCompiled of `model`, or, without a model, a decorator making one
    with these options (`@graphgpt.compile(dynamic=True)`)."""
    if model is None:
        def decorate(function: Callable) -> LazyCompiled:
            return lazy_compile(function, options, dynamic, cache_size_limit)

        decorate.__doc__ = "graphgpt.compile with the options given, for the function or Module decorated"
        return decorate
    if not callable(model):
        raise TypeError(f"graphgpt.compile needs a Module or a function to compile, got {type(model).__name__}")
    lazy = LazyCompiled(model, options, dynamic, cache_size_limit)
    if not isinstance(model, Module):
        functools.update_wrapper(lazy, model, updated=())  # a decorated function keeps its name and docstring
    return lazy
