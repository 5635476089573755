"""Activation functions and losses as modules (torch.nn's and the course's classes), each calling its one function
in graphgpt.nn.functional: `nn.ReLU()(x)`, `nn.CrossEntropyLoss()(logits, targets)`."""

from __future__ import annotations

from typing import Optional

from ..tensor import Tensor
from . import functional as F
from .module import Module


class ReLU(Module):
    def forward(self, x) -> Tensor:
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x) -> Tensor:
        return F.tanh(x)


class GELU(Module):
    """GELU, tanh approximation (graphgpt's only GELU; torch's GELU(approximate='tanh'))."""

    def forward(self, x) -> Tensor:
        return F.gelu(x)


class Softmax(Module):
    """Softmax along `dim`; forward also takes the course's `softmax(x, dim=...)`."""

    def __init__(self, dim: int = -1):
        self.dim = dim

    def forward(self, x, dim: Optional[int] = None) -> Tensor:
        return F.softmax(x, self.dim if dim is None else dim)


class MSELoss(Module):
    """loss(prediction, target): mean squared error over all elements."""

    def forward(self, prediction, target) -> Tensor:
        return F.mse_loss(prediction, target)


class BCELoss(Module):
    """loss(probability, target): binary cross-entropy of probabilities (after a sigmoid), mean over elements."""

    def forward(self, probability, target) -> Tensor:
        return F.binary_cross_entropy(probability, target)


class CrossEntropyLoss(Module):
    """loss(logits, targets): mean cross-entropy of logits (..., classes) against integer class indices (...)."""

    def forward(self, logits, targets) -> Tensor:
        return F.cross_entropy(logits, targets)
