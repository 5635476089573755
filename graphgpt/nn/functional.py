"""Functions over tensors (torch.nn.functional's role). Most are one op; they accept Tensors or array-likes."""

from __future__ import annotations

import math

from typing import Optional

import numpy as np

from ..tensor import Tensor, as_tensor
from .masks import checked_mask


def softmax(x, axis: int = -1, *, dim: Optional[int] = None) -> Tensor:
    """Softmax along `axis` (`dim=`, torch's and the course's name for it, says the same)."""
    return as_tensor(x).softmax(axis if dim is None else dim)


def log_softmax(x, axis: int = -1, *, dim: Optional[int] = None) -> Tensor:
    """Log of softmax along `axis` (or `dim=`, as softmax)."""
    return as_tensor(x).log_softmax(axis if dim is None else dim)


def tanh(x) -> Tensor:
    return as_tensor(x).tanh()


def gelu(x) -> Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return as_tensor(x).gelu()


def relu(x) -> Tensor:
    """max(x, 0); its gradient is 0 at 0, as torch's."""
    return as_tensor(x).relu()


def sigmoid(x) -> Tensor:
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    return as_tensor(x).sigmoid()


def mse_loss(prediction, target) -> Tensor:
    """Mean over all elements of (prediction - target)^2 (torch's reduction='mean')."""
    difference = as_tensor(prediction) - target
    return (difference * difference).mean()


def binary_cross_entropy(probability, target) -> Tensor:
    """Mean of -(t log p + (1 - t) log(1 - p)) for probabilities p in [0, 1]; each log is clamped at -100, as
    torch's, so a p of exactly 0 or 1 gives a finite loss."""
    probability, target = as_tensor(probability), as_tensor(target)
    log_p = probability.log().maximum(-100.0)
    log_not_p = (1.0 - probability).log().maximum(-100.0)
    return -(log_p * target + log_not_p * (1.0 - target)).mean()


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
    positions <= t only (the seed's np.triu(ones * -inf, k=1)). The GPT's own convention; for the course's
    True = may attend one, see create_causal_mask."""
    future = np.triu(np.ones((seq_len, seq_len), dtype=bool), k=1)
    return Tensor(np.where(future, -np.inf, 0.0), dtype=dtype)


def create_causal_mask(seq_len: int) -> Tensor:
    """(seq_len, seq_len) bool mask, True on and below the diagonal: True = may attend, the TinyTorch course's
    convention (its np.tril(np.ones(...)) as bool, which scaled_dot_product_attention tells apart by dtype)."""
    return Tensor(np.tril(np.ones((seq_len, seq_len), dtype=bool)))


def scaled_dot_product_attention(q, k, v, mask=None) -> tuple[Tensor, Tensor]:
    """softmax(q @ k^T / sqrt(head_dim) + mask) @ v over the last two axes, leading axes batched.

    `mask` (broadcast against the (..., T_q, T_k) scores) is either bool, True = may attend (the course's and
    torch's convention), or float, added to the scores (0 / -inf, or any finite bias: graphgpt's causal_mask). A
    float mask of only 0s and 1s is refused, as it would mask nothing; graphgpt/nn/masks.py says what is checked
    eagerly and what while tracing. A query row with every key masked attends to nothing and gives zeros.
    Returns (output, attention weights), as the TinyTorch course's function does (torch's returns the output
    only: `out, _ = scaled_dot_product_attention(q, k, v)`); unused weights cost nothing in a compiled graph.
    """
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        mask = checked_mask(mask, scores.dtype)
        scores = mask.where(scores, -math.inf) if mask.dtype == "bool" else scores + mask
    weights = softmax(scores, axis=-1)
    output = weights @ v
    return output, weights
