"""What a compiled graph assumed about the live objects around it, checked before every run, so a change to the
model or optimizer is either followed or refused, never silently ignored.

The graph reads the model's parameters and buffers, and the optimizer's state, at every run. It finds them again
each run by where they live (module attribute paths, optimizer state names), so a tensor replaced by another of
the same type is simply read (as eager code would read it). What the graph baked in cannot be followed, and is
refused with what changed: a sub-module replaced (its forward may build another graph), a bound tensor removed
or no longer a Tensor, an optimizer hyperparameter changed (its value is a constant of the update).

    guard = BindingGuard(model, names, optimizer)
    tensors = guard.current()   # the tensors to bind now, in `names` order; InputError if the model changed
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

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


class BindingGuard:
    """Finds the tensors a compiled graph binds (by graph parameter name) and checks what it baked in."""

    def __init__(self, model: object, names: Sequence[str], optimizer: Optional[Optimizer] = None):
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
                if not name.startswith(STATE_PREFIX) or self._optimizer is None:
                    self._paths[name] = self._walk(name)
                    self._trained[name] = bool(getattr(self._paths[name][-1][1], "requires_grad", False))
        self._snapshot(self._current_bindings_at_compile())

    def _current_bindings_at_compile(self) -> list[Optional[Tensor]]:
        return [path[-1][1] if (path := self._paths.get(name)) else self._state_tensor_or_none(name)
                for name in self._names]

    def _state_tensor_or_none(self, name: str) -> Optional[Tensor]:
        if self._optimizer is None or not name.startswith(STATE_PREFIX):
            return None
        return self._optimizer.state.get(name[len(STATE_PREFIX):])

    def _snapshot(self, tensors: Sequence[Optional[Tensor]]) -> None:
        """Remember every (container, key) -> object link the bound tensors are reached through, and their
        requires_grad, for the fast check: the same objects in the same places mean nothing moved."""
        links: dict[tuple[int, object], tuple[object, object, object]] = {}
        if self._optimizer is not None:
            links[(id(self._optimizer), "state")] = (vars(self._optimizer), "state", self._optimizer.state)
        for name, tensor in zip(self._names, tensors):
            path = self._paths.get(name)
            if path is not None:
                container: object = self._model
                for depth, (key, then) in enumerate(path):
                    holder = container if isinstance(key, int) else vars(container)
                    expected = tensor if depth == len(path) - 1 else then  # the tensor bound now, if rebound
                    links[(id(holder), key)] = (holder, key, expected)
                    container = then
            elif tensor is not None:
                links[(id(self._optimizer.state), name)] = (self._optimizer.state, name[len(STATE_PREFIX):], tensor)
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
        if self._unchanged():
            return list(bound)
        tensors = list(bound)
        for position, name in enumerate(self._names):
            path = self._paths.get(name)
            if path is not None:
                tensors[position] = self._current_model_tensor(name, path)
            elif self._optimizer is not None and name.startswith(STATE_PREFIX):
                tensors[position] = self._current_state_tensor(name)
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
        tensor = self._optimizer.state.get(name[len(STATE_PREFIX):])
        if not isinstance(tensor, Tensor):
            raise ModelChangedError(f"optimizer state {name!r} is gone since compile; compile again")
        return tensor
