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
    """A (vocab_size, embed_dim) table of learned rows, gathered by integer indices.

    Rows start normal with std 0.02, GPT-2's and nanoGPT's initialisation, kept on purpose: the course's Embedding
    starts uniform in +-sqrt(6 / (vocab_size + embed_dim)) (std about 0.1 for its small models), but 0.02 keeps
    the first logits near uniform (an initial loss close to log(vocab_size)), and the trainer's learning rates,
    the golden graphs and the published checkpoints are all made with it. Set `weight.data` to start otherwise."""

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


def sinusoidal_encoding(max_seq_len: int, embed_dim: int, dtype="float32") -> np.ndarray:
    """(max_seq_len, embed_dim) table of Vaswani et al.'s encoding: PE[pos, 2i] = sin(pos / 10000^(2i/d)),
    PE[pos, 2i+1] = cos(pos / 10000^(2i/d)), computed in float64 (the course's create_sinusoidal_embeddings)."""
    position = np.arange(max_seq_len, dtype=np.float64)[:, None]
    frequency = np.exp(np.arange(0, embed_dim, 2, dtype=np.float64) * -(math.log(10000.0) / embed_dim))
    table = np.zeros((max_seq_len, embed_dim))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[:embed_dim // 2])  # an odd embed_dim has one cosine fewer
    return table.astype(dtype)


class PositionalEncoding(Module):
    """Adds the fixed sinusoidal encoding of each position to (batch, seq_len, embed_dim) or (seq_len, embed_dim)
    inputs: a buffer, not trained (the course's PositionalEncoding(max_seq_len, embed_dim) signature; its own is a
    learned table, which graphgpt's GPT has as position_embedding)."""

    def __init__(self, max_seq_len: int, embed_dim: int):
        self.max_seq_len = max_seq_len
        self.embed_dim = embed_dim
        self.encoding = Tensor(sinusoidal_encoding(max_seq_len, embed_dim))

    def forward(self, x) -> Tensor:
        x = as_tensor(x)
        if x.ndim not in (2, 3) or x.shape[-1] != self.embed_dim:
            raise ValueError(f"PositionalEncoding expects (batch, seq_len, {self.embed_dim}) or "
                             f"(seq_len, {self.embed_dim}), got {list(x.shape)}")
        seq_len = x.shape[-2]
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} is longer than max_seq_len {self.max_seq_len}")
        encoding = self.encoding[:seq_len]
        return x + (encoding if encoding.dtype == x.dtype else encoding.astype(x.dtype))
