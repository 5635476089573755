"""Symbol: a graph value seen through the op-building API, so code such as a gradient rule (`g * b`) appends nodes
to a GraphBuilder. Every node it emits gets the builder's current provenance."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .builder import UNKNOWN_PROVENANCE, GraphBuilder
from .graph import Provenance, Value
from .tensor_ops import TensorOps
from .types import TensorType


class Emitter:
    """A GraphBuilder plus the provenance stamped on what Symbols emit (changed as the emitting code moves from
    one forward node's gradient to the next)."""

    def __init__(self, builder: GraphBuilder, provenance: Provenance = UNKNOWN_PROVENANCE):
        self.builder = builder
        self.provenance = provenance

    def symbol(self, value: Value) -> "Symbol":
        return Symbol(value, self)


class Symbol(TensorOps):
    """A Value of a graph under construction; ops on it append nodes through its Emitter."""

    __slots__ = ("value", "emitter")

    def __init__(self, value: Value, emitter: Emitter):
        self.value = value
        self.emitter = emitter

    @property
    def type(self) -> TensorType:
        return self.value.type

    def _apply(self, op: str, inputs: tuple, attrs: Optional[dict] = None) -> "Symbol":
        emitter = self.emitter
        value = emitter.builder.add_node(op, [symbol.value for symbol in inputs], attrs or {}, emitter.provenance)
        return Symbol(value, emitter)

    def _lift(self, array: np.ndarray) -> "Symbol":
        return Symbol(self.emitter.builder.add_constant(array, self.emitter.provenance), self.emitter)

    def __repr__(self) -> str:
        return f"Symbol({self.value!r})"
