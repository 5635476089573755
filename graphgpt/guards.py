"""What a compiled graph assumed about the live objects around it, checked before every run, so a change to the
model or optimizer is either followed or refused, never silently ignored.

The graph reads the model's parameters and buffers, and the optimizer's state, at every run. It finds them again
each run by where they live (module attribute paths, optimizer state names), so a tensor replaced by another of
the same type is simply read (as eager code would read it). What the graph baked in cannot be followed, and is
refused with what changed: a sub-module replaced (its forward may build another graph), a bound tensor removed
or no longer a Tensor, an optimizer hyperparameter changed (its value is a constant of the update), and a module's
plain Python attribute changed, added or removed (see AttributeWatch: `model.temperature = 2.0`,
`attention.num_heads = 2`; the forward read it as a Python value while tracing, so the graph froze it in).

    guard = BindingGuard(model, names, optimizer)
    tensors = guard.current()   # the tensors to bind now, in `names` order; InputError if the model changed
"""

from __future__ import annotations

import math
from operator import getitem, is_
from typing import Collection, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import ShapeError

from graphgpt.passes.optimizer_update import STATE_PREFIX

from .nn.module import Module
from .optim import Optimizer
from .tensor import Tensor


class ModelChangedError(ShapeError):
    """The model or optimizer changed since compile in a way the compiled graph cannot follow."""


def _step(container: object, key: Union[str, int]) -> object:
    """One step of a module path: an item of a list or tuple attribute (int key), or a module attribute."""
    if isinstance(key, int):
        return container[key] if isinstance(container, (list, tuple)) and key < len(container) else None
    attributes = getattr(container, "__dict__", None)
    return attributes.get(key) if attributes is not None else None


# Values a forward may read as Python values while tracing, so that the graph froze them in: numbers, strings, None
# and tuples of those (numpy scalars too, as GPT's sizes may be).
_PLAIN_TYPES = (bool, int, float, complex, str, bytes, type(None), np.generic)


def _is_plain(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_is_plain(item) for item in value)
    return isinstance(value, _PLAIN_TYPES)


def _same_plain(old: object, new: object) -> bool:
    """Equal values of the same type (1 is not 1.0 or True here: a forward may tell them apart); NaN equals NaN."""
    if isinstance(old, tuple) and isinstance(new, tuple):
        return len(old) == len(new) and all(_same_plain(a, b) for a, b in zip(old, new))
    if type(old) is not type(new):
        return False
    if isinstance(old, (float, np.floating)) and math.isnan(old):
        return bool(math.isnan(new))
    return bool(old == new)


def _shown(kind: Optional[str], value: object) -> str:
    """An attribute's value for a message: repr of a plain value (cut to 60 characters), else what it is."""
    if kind is None:
        return "(not set)"
    if kind == "items":
        return f"a list of {value} items"
    text = repr(value) if kind == "value" else value if kind == "other" else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _watched_list(value: object) -> bool:
    """A list or tuple holding sub-modules (GPT's `blocks`): its length and items are watched."""
    return isinstance(value, (list, tuple)) and any(isinstance(item, Module) for item in value)


class AttributeWatch:
    """What every module of a model held when the graph was traced, besides its tensors: plain Python attributes
    (ints, floats, bools, strings, None, tuples of those) by value, sub-modules (also those in lists and tuples)
    by identity, and how many items each such list holds.

    All of them, not only those the forward read: tracing records Tensor ops, not Python attribute reads, so we
    cannot know which attributes the graph depends on, and any change (a value, a new attribute, a removed one)
    invalidates it. Tensors are left to BindingGuard, which follows a tensor replaced by another of its type;
    other objects (arrays, functions, dicts) are not watched.

    `unchanged()` runs before every run: identity checks of the snapshotted objects and the length of every
    module's attribute dict, iterated in C (map over operator.getitem and is_). On the 6-layer GPT
    `graphgpt.nn.GPT(65, 256, 6, 8, 128)` (71 modules, 223 watched objects) it takes 10-12 us per run: the
    guard's whole check (BindingGuard.current, best of 9 x 2000 calls) went from 13-16 us to 24-27 us, on a
    loaded 2-core machine. Only when an identity check fails (a value reassigned, even an equal one) does
    `changed()` compare values."""

    def __init__(self, model: Module):
        self._model = model
        self._take()

    def _take(self) -> None:
        self._values = self._describe()
        holders: list = []
        keys: list = []
        expected: list = []
        sized: list = []
        for _, module in self._model.named_modules():
            attributes = vars(module)
            sized.append(attributes)
            for key, value in attributes.items():
                if _is_plain(value) or isinstance(value, Module) or _watched_list(value):
                    holders.append(attributes)
                    keys.append(key)
                    expected.append(value)
                if _watched_list(value):
                    sized.append(value)
                    holders.extend([value] * len(value))
                    keys.extend(range(len(value)))
                    expected.extend(value)
        self._holders, self._keys, self._expected = holders, keys, expected
        self._sized, self._sizes = sized, [len(holder) for holder in sized]

    def _describe(self) -> dict[str, tuple[str, object]]:
        """Every attribute by dotted path: ('value', v), ('module', m), ('items', count) or, not watched,
        ('other', its type's name)."""
        described: dict[str, tuple[str, object]] = {}
        for path, module in self._model.named_modules():
            for key, value in vars(module).items():
                name = f"{path}.{key}" if path else key
                if _is_plain(value):
                    described[name] = ("value", value)
                elif isinstance(value, Module):
                    described[name] = ("module", value)
                elif _watched_list(value):
                    described[name] = ("items", len(value))
                    for index, item in enumerate(value):
                        described[f"{name}.{index}"] = ("module", item) if isinstance(item, Module) else \
                            ("value", item) if _is_plain(item) else ("other", type(item).__name__)
                else:  # not watched, but named when a watched value becomes one (`bias` None -> Parameter)
                    described[name] = ("other", type(value).__name__)
        return described

    def unchanged(self) -> bool:
        """True when every watched object is where it was (the common case, checked before each run)."""
        try:
            return (all(map(is_, map(getitem, self._holders, self._keys), self._expected))
                    and list(map(len, self._sized)) == self._sizes)
        except (KeyError, IndexError):
            return False

    def changed(self) -> Optional[str]:
        """What changed since the snapshot, in one line; None if nothing the graph depends on did (an equal value
        reassigned, an unwatched attribute added), in which case the snapshot is taken again."""
        now = self._describe()
        for name in [*self._values, *(name for name in now if name not in self._values)]:
            (old_kind, old), (new_kind, new) = self._values.get(name, (None, None)), now.get(name, (None, None))
            if old_kind in (None, "other") and new_kind in (None, "other"):
                continue  # tensors (BindingGuard's) and other objects are not watched
            if old_kind == new_kind and (_same_plain(old, new) if old_kind == "value" else
                                         old is new if old_kind == "module" else old == new):
                continue
            if old_kind == new_kind == "module":
                return (f"{name!r} of the model was replaced since compile: the compiled graph was traced through "
                        f"the old one; compile again")
            if old_kind == new_kind == "items":
                return (f"{name!r} of the model holds {new} items now, {old} when compiled: the compiled graph was "
                        f"traced through those; compile again")
            if "module" in (old_kind, new_kind) and None in (old_kind, new_kind):
                change = "is gone from the model" if new_kind is None else "was added to the model"
                return f"module {name!r} {change} since compile; compile again"
            return (f"attribute {name!r} of the model changed {_shown(old_kind, old)} -> {_shown(new_kind, new)} "
                    f"since compile: the compiled graph was traced with the old value; compile again")
        self._take()
        return None


class BindingGuard:
    """Finds the tensors a compiled graph binds (by graph parameter name) and checks what it baked in."""

    def __init__(self, model: object, names: Sequence[str], optimizer: Optional[Optimizer] = None,
                 own_state: Collection[str] = ()):
        """`own_state`: names of tensors the compiled object holds itself (a KV cache), not the model."""
        self._model = model if isinstance(model, Module) else None
        self._optimizer = optimizer
        self._hyperparameters = dict(optimizer.hyperparameters) if optimizer is not None else None
        self._names = list(names)
        # For each module-held name: its path as (key, object found there at compile time) steps, ending at
        # the tensor, and whether the tensor was trained (the graph computes gradients for exactly those).
        self._paths: dict[str, list[tuple[Union[str, int], object]]] = {}
        self._trained: dict[str, bool] = {}
        if self._model is not None:
            for name in self._names:
                if name not in own_state and (not name.startswith(STATE_PREFIX) or self._optimizer is None):
                    self._paths[name] = self._walk(name)
                    self._trained[name] = bool(getattr(self._paths[name][-1][1], "requires_grad", False))
        self._snapshot(self._current_bindings_at_compile())
        self._attributes = AttributeWatch(self._model) if self._model is not None else None

    def _current_bindings_at_compile(self) -> list[Optional[Tensor]]:
        return [path[-1][1] if (path := self._paths.get(name)) else self._state_tensor_or_none(name)
                for name in self._names]

    def _state_tensor_or_none(self, name: str) -> Optional[Tensor]:
        if self._optimizer is None or not name.startswith(STATE_PREFIX):
            return None
        return self._optimizer.state_tensor(name[len(STATE_PREFIX):])

    def _state_holder(self, name: str) -> dict:
        """The optimizer's dict holding the state of graph parameter `name`: its joined vectors, or its state."""
        return self._optimizer.joined if name[len(STATE_PREFIX):] in self._optimizer.joined else self._optimizer.state

    def _snapshot(self, tensors: Sequence[Optional[Tensor]]) -> None:
        """Remember every (container, key) -> object link the bound tensors are reached through, and their
        requires_grad, for the fast check: the same objects in the same places mean nothing moved."""
        links: dict[tuple[int, object], tuple[object, object, object]] = {}
        if self._optimizer is not None:
            links[(id(self._optimizer), "state")] = (vars(self._optimizer), "state", self._optimizer.state)
            links[(id(self._optimizer), "joined")] = (vars(self._optimizer), "joined", self._optimizer.joined)
        for name, tensor in zip(self._names, tensors):
            path = self._paths.get(name)
            if path is not None:
                container: object = self._model
                for depth, (key, then) in enumerate(path):
                    holder = container if isinstance(key, int) else vars(container)
                    expected = tensor if depth == len(path) - 1 else then  # the tensor bound now, if rebound
                    links[(id(holder), key)] = (holder, key, expected)
                    container = then
            elif tensor is not None and self._optimizer is not None and name.startswith(STATE_PREFIX):
                holder = self._state_holder(name)
                links[(id(holder), name)] = (holder, name[len(STATE_PREFIX):], tensor)
        self._links = [link for link in links.values() if not isinstance(link[1], int)]
        self._list_links = [link for link in links.values() if isinstance(link[1], int)]
        self._flags = [(tensor, tensor.requires_grad) for name, tensor in zip(self._names, tensors)
                       if name in self._paths and isinstance(tensor, Tensor)]

    def _unchanged(self) -> bool:
        return (all(holder.get(key) is then for holder, key, then in self._links)
                and all(key < len(holder) and holder[key] is then for holder, key, then in self._list_links)
                and all(tensor.requires_grad is flag for tensor, flag in self._flags))

    def _walk(self, name: str) -> list[tuple[Union[str, int], object]]:
        """(key, object) for every step of `name` from the root module, ending at the tensor (None past a gap)."""
        steps, current = [], self._model
        for part in name.split("."):
            key = int(part) if isinstance(current, (list, tuple)) and part.isdigit() else part
            current = _step(current, key) if current is not None else None
            steps.append((key, current))
        return steps

    def current(self, bound: Sequence[Tensor]) -> list[Tensor]:
        """The tensors to bind for this run (`bound`: those of the last run, by name order). Runs before every
        step, so the common case (nothing changed) allocates nothing but the list it returns."""
        if self._optimizer is not None and self._optimizer.hyperparameters != self._hyperparameters:
            changed = {key: f"{self._hyperparameters.get(key)!r} -> {value!r}"
                       for key, value in self._optimizer.hyperparameters.items()
                       if self._hyperparameters.get(key) != value}
            raise ModelChangedError(f"the optimizer's hyperparameters changed since compile ({changed}); they are "
                                    f"constants of the compiled update: compile again")
        if self._optimizer is not None:
            try:  # a parameter's state replaced since the last run: copied into its joined vector
                self._optimizer.gather_joined_state()
            except ValueError as error:
                raise ModelChangedError(str(error)) from None
        if self._unchanged() and (self._attributes is None or self._attributes.unchanged()):
            return list(bound)
        tensors = list(bound)
        for position, name in enumerate(self._names):
            path = self._paths.get(name)
            if path is not None:
                tensors[position] = self._current_model_tensor(name, path)
            elif self._optimizer is not None and name.startswith(STATE_PREFIX):
                tensors[position] = self._current_state_tensor(name)
        if self._attributes is not None and not self._attributes.unchanged():
            change = self._attributes.changed()  # None: nothing the graph depends on (the watch looked again)
            if change is not None:
                raise ModelChangedError(change)
        self._snapshot(tensors)  # the new tensors are where they are now: the fast check holds again
        return tensors

    def _current_model_tensor(self, name: str, path: list[tuple[Union[str, int], object]]) -> Tensor:
        current: object = self._model
        moved_at = None
        for depth, (key, then) in enumerate(path):
            current = _step(current, key)
            if current is not then:
                moved_at = depth
                break
        if moved_at is not None and moved_at < len(path) - 1:
            where = ".".join(str(key) for key, _ in path[:moved_at + 1])
            raise ModelChangedError(f"{where!r} of the model was replaced since compile: the compiled graph was "
                                    f"traced through the old one; compile again")
        if not isinstance(current, Tensor):
            raise ModelChangedError(f"parameter {name!r} is gone from the model since compile (found "
                                    f"{type(current).__name__}); compile again")
        if current.requires_grad != self._trained[name]:
            raise ModelChangedError(f"parameter {name!r} has requires_grad={current.requires_grad} now, "
                                    f"{self._trained[name]} when compiled: the graph's gradients are for the "
                                    f"parameters trained then; compile again")
        return current

    def _current_state_tensor(self, name: str) -> Tensor:
        tensor = self._optimizer.state_tensor(name[len(STATE_PREFIX):])
        if not isinstance(tensor, Tensor):
            raise ModelChangedError(f"optimizer state {name!r} is gone since compile; compile again")
        return tensor
