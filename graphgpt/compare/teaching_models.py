"""Two small models written to show, from real runs, what each side can and cannot do; the errors they raise name
lines of this file, as they would name lines of a student's model.

- RefineUntilSmall loops a data-dependent number of times: Python reads a value of the activations to decide
  whether to go on. The eager tape runs it (and differentiates through however many rounds ran); tracing it
  cannot, since the value is not known while the graph is built, and raises TraceError at the `while` line.
- MisWiredClassifier puts a classifier of the wrong width after a whole GPT. The tape finds the mismatch only at
  the failing matmul, after computing every op of the GPT before it; compile finds it from shapes alone, having
  computed nothing.
"""

from __future__ import annotations

import numpy as np

from ..nn.layers import Linear
from ..nn.module import Module
from ..tensor import Parameter, Tensor

MAX_ROUNDS = 8


class RefineUntilSmall(Module):
    """Refine a hidden state until its mean square falls under `threshold` (at most MAX_ROUNDS rounds), then read
    out one number per example: how many rounds run depends on the input."""

    def __init__(self, width: int = 8, threshold: float = 0.25):
        self.encode = Linear(width, width)
        self.refine = Linear(width, width)
        self.readout = Linear(width, 1)
        self.threshold = threshold
        self.rounds = 0

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.encode(x)
        self.rounds = 0
        while self.rounds < MAX_ROUNDS and (hidden * hidden).mean() > self.threshold:
            hidden = (self.refine(hidden) * 0.5).tanh()
            self.rounds += 1
        return self.readout(hidden)


class MisWiredClassifier(Module):
    """A GPT followed by a classifier sized for its embedding width, applied by mistake to its logits (the
    vocabulary width)."""

    def __init__(self, gpt, classes: int = 2):
        self.gpt = gpt
        self.classifier = Parameter(np.zeros((gpt.embed_dim, classes), np.float32))

    def forward(self, tokens: Tensor) -> Tensor:
        logits = self.gpt(tokens)
        return logits @ self.classifier
