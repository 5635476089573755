"""Dropout, seeded and deterministic eagerly and compiled alike.

Each Dropout module holds an int64 random key as a buffer, drawn at construction from graphgpt's generator (so
graphgpt.manual_seed before building a model fixes every mask it will draw). A call in training mode draws its mask
with the `dropout_mask` op from the key, then advances the key by one: eagerly in place, and in a compiled graph by
a graph update (the key is a buffer, read live at every run, and the run writes key + 1 back into it, as an
optimizer step writes its weights). So the n-th call draws the same mask eagerly or in the n-th compiled run, and
no two runs reuse one. In evaluation mode (model.eval()) Dropout passes its input through.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import random
from ..tensor import Tensor, as_tensor
from .module import Module
from .state import advance, current


class Dropout(Module):
    """Zero each element with probability p in training mode and scale the rest by 1 / (1 - p); identity in
    evaluation mode. `forward(x, training=None)` also takes the course's explicit flag (None: the module's mode)."""

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be a number from 0 to 1, got {p!r}")
        self.p = float(p)
        self.key = Tensor(np.asarray(random._generator().integers(0, 1 << 62), np.int64))

    def forward(self, x, training: Optional[bool] = None) -> Tensor:
        x = as_tensor(x)
        if not (self.training if training is None else training) or self.p == 0.0:
            return x
        if self.p == 1.0:  # drop everything (the mask's 1 / (1 - p) has no value here)
            return x * 0.0
        key = current(self.key)
        output = x * key.dropout_mask(x.shape, self.p, x.dtype)
        advance(self.key, key + 1)
        return output

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
