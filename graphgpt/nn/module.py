"""Module: the base of every layer. Finds its parameters and sub-modules by walking attributes (lists of modules
included, as the seed's `self.blocks = [...]`), names them by attribute path, and saves and loads their values."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Mapping

import numpy as np

from graphgpt.ir.types import canonical_dtype

from ..tensor import Parameter, Tensor
from ..tracing import module_scope


class Module:
    """Subclass it, set Parameters and sub-Modules as attributes in __init__, and write forward()."""

    # torch's flag: True in training mode (Dropout drops), False in evaluation mode (train(False) / eval()). A class
    # attribute, so subclasses need not call Module.__init__; train() sets it per module only where it changes.
    training = True

    def __call__(self, *args, **kwargs):
        with module_scope(self):
            return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def _children(self) -> Iterator[tuple[str, object]]:
        """(name, Tensor or Module) in attribute order; list and tuple items are named by index."""
        for name, attribute in vars(self).items():
            if isinstance(attribute, (Tensor, Module)):
                yield name, attribute
            elif isinstance(attribute, (list, tuple)):
                for index, item in enumerate(attribute):
                    if isinstance(item, (Tensor, Module)):
                        yield f"{name}.{index}", item

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module (named `prefix`) and every sub-module, depth first, by attribute path."""
        yield prefix, self
        for name, child in self._children():
            if isinstance(child, Module):
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(path, parameter) pairs such as ('blocks.0.ln1.gamma', ...); a shared parameter is listed once."""
        return self._named_tensors(prefix, buffers=False)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(path, tensor) for every Tensor attribute that is not a Parameter: module state that is not trained
        (a fixed mask, a running statistic). A compiled graph reads it live at every run, as it does parameters,
        so changing it later is seen."""
        return self._named_tensors(prefix, buffers=True)

    def _named_tensors(self, prefix: str, buffers: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        for module_path, module in self.named_modules(prefix):
            for name, child in module._children():
                if isinstance(child, Tensor) and isinstance(child, Parameter) != buffers and id(child) not in seen:
                    seen.add(id(child))
                    yield (f"{module_path}.{name}" if module_path else name), child

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def train(self, mode: bool = True) -> "Module":
        """Set training mode on this module and every sub-module (torch's Module.train); returns self.

        A model compiled in one mode refuses to run after the mode changes (ModelChangedError: the graph was traced
        with or without Dropout's masks); compile it again."""
        for _, module in self.named_modules():
            if module.training != mode:  # unchanged modes leave the module's attributes, so its guards, as they are
                module.training = bool(mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode (train(False)): Dropout passes its input through unchanged."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget the gradients eager backward() accumulated in every parameter's .grad."""
        for parameter in self.parameters():
            parameter.grad = None

    def to(self, dtype) -> "Module":
        """Convert every floating-point parameter and buffer to `dtype` in place (float64 for gradient checks)."""
        dtype = canonical_dtype(dtype)
        for _, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if tensor.type.is_float:
                tensor.data = tensor.data.astype(dtype)
        return self

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """A copy of every parameter's values, by name."""
        return OrderedDict((name, parameter.data.copy()) for name, parameter in self.named_parameters())

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy values into the parameters in place. Refuses (changing nothing) if any name is missing or extra,
        or any shape differs, and names every such entry."""
        parameters = dict(self.named_parameters())
        missing = [name for name in parameters if name not in state]
        unexpected = [name for name in state if name not in parameters]
        mismatched = []
        for name, parameter in parameters.items():
            if name in state:
                shape = np.shape(state[name].data if isinstance(state[name], Tensor) else state[name])
                if tuple(shape) != parameter.shape:
                    mismatched.append(f"{name}: expected shape {list(parameter.shape)}, got {list(shape)}")
        if missing or unexpected or mismatched:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unexpected {unexpected}")
            if mismatched:
                parts.append("mismatched shapes: " + "; ".join(mismatched))
            raise ValueError(f"cannot load state into {type(self).__name__}: " + ", ".join(parts))
        for name, parameter in parameters.items():
            value = state[name]
            value = value.data if isinstance(value, Tensor) else value
            parameter.data[...] = np.asarray(value, dtype=parameter.dtype)

    def num_parameters(self) -> int:
        return sum(parameter.size for parameter in self.parameters())
