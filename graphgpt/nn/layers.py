"""The basic layers, with TinyTorch's names and layouts: Linear (weight is (in_features, out_features),
y = x @ W + b), Embedding, LayerNorm (biased variance, eps 1e-5)."""

from __future__ import annotations

import math

import numpy as np

from .. import random
from ..tensor import Parameter, Tensor, as_tensor
from . import functional as F
from .module import Module


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.in_features = in_features
        self.out_features = out_features
        # Xavier-style initialisation, as in the seed.
        std = math.sqrt(2.0 / (in_features + out_features))
        self.weight = Parameter(random.normal(std, (in_features, out_features)))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        output = x @ self.weight
        if self.bias is not None:
            output = output + self.bias
        return output


class Embedding(Module):
    def __init__(self, vocab_size: int, embed_dim: int):
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.weight = Parameter(random.normal(0.02, (vocab_size, embed_dim)))

    def forward(self, indices) -> Tensor:
        return F.embedding(self.weight, as_tensor(indices))  # (*indices.shape, embed_dim)


class LayerNorm(Module):
    def __init__(self, normalized_shape: int, eps: float = 1e-5):
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.gamma = Parameter(np.ones(normalized_shape, np.float32))
        self.beta = Parameter(np.zeros(normalized_shape, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.gamma, self.beta, self.eps)
