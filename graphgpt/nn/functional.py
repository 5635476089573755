"""Functions over tensors (torch.nn.functional's role). Each is one op; they accept Tensors or array-likes."""

from __future__ import annotations

import numpy as np

from ..tensor import Tensor, as_tensor


def softmax(x, axis: int = -1) -> Tensor:
    return as_tensor(x).softmax(axis)


def log_softmax(x, axis: int = -1) -> Tensor:
    return as_tensor(x).log_softmax(axis)


def gelu(x) -> Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return as_tensor(x).gelu()


def layer_norm(x, gamma, beta, eps: float = 1e-5) -> Tensor:
    return as_tensor(x).layer_norm(gamma, beta, eps)


def cross_entropy(logits, targets) -> Tensor:
    """Mean over all positions of -log softmax(logits)[target]; targets are integer class indices.

    >>> cross_entropy(Tensor(np.zeros((2, 4), np.float32)), Tensor(np.array([0, 3]))).data  # log(4)
    array(1.3862944, dtype=float32)
    """
    return as_tensor(logits).cross_entropy(as_tensor(targets))


def embedding(weight, indices) -> Tensor:
    return as_tensor(weight).embedding(as_tensor(indices))


def where(condition, if_true, if_false) -> Tensor:
    return as_tensor(condition).where(if_true, if_false)


def causal_mask(seq_len: int, dtype="float32") -> Tensor:
    """(seq_len, seq_len) additive mask: 0 on and below the diagonal, -inf above, so position t attends to
    positions <= t only (the seed's np.triu(ones * -inf, k=1))."""
    future = np.triu(np.ones((seq_len, seq_len), dtype=bool), k=1)
    return Tensor(np.where(future, -np.inf, 0.0).astype(dtype))
