"""Independent NumPy references for the op table (tests/test_ops.py): float64 loops and textbook formulas, never
an op's own kernel, so a row compares the kernel with arithmetic written apart from it."""

from __future__ import annotations

import math

import numpy as np


def gelu64(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_grad64(g, x):
    """The textbook derivative of gelu64 (not the kernel's factored form), times g."""
    c, k = math.sqrt(2.0 / math.pi), 0.044715
    t = np.tanh(c * (x + k * x ** 3))
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t ** 2) * c * (1.0 + 3.0 * k * x ** 2))


def layer_norm_grad64(g, x, gamma, eps):
    """g times the explicit Jacobian of layer_norm64 row by row: d out_j / d x_i =
    gamma_j / std (delta_ij - 1/n - x^_i x^_j / n)."""
    n, rows = x.shape[-1], math.prod(x.shape[:-1])
    if n == 0:  # rows of no features: nothing to differentiate
        return np.zeros_like(x)
    rows_g, rows_x = g.reshape(rows, n), x.reshape(rows, n)
    result = np.empty_like(rows_x)
    for row, (row_g, row_x) in enumerate(zip(rows_g, rows_x)):
        std = np.sqrt(row_x.var() + eps)
        normalized = (row_x - row_x.mean()) / std
        jacobian = (np.eye(n) - 1.0 / n - np.outer(normalized, normalized) / n) * gamma[None, :] / std
        result[row] = jacobian @ row_g
    return result.reshape(x.shape)


def layer_norm_gamma_grad64(g, x, eps):
    normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return (g * normalized).reshape(math.prod(x.shape[:-1]), x.shape[-1]).sum(axis=0)


def matmul64(a, b):
    """Batched matrix product as broadcast multiply-and-sum over the inner axis (no np.matmul)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(axis=-2)


def per_row(function, x, axis):
    """Apply a function of one 1-d row to every row of x along axis, one row at a time."""
    moved = np.moveaxis(x, axis, -1)
    rows = [function(row) for row in moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])]
    return np.moveaxis(np.array(rows, dtype=x.dtype).reshape(moved.shape), -1, axis)


def softmax_row(row):
    if row.size == 0 or np.all(row == -np.inf):  # a fully masked row has no distribution: zeros
        return np.zeros_like(row)
    e = np.exp(row - row.max())
    return e / e.sum()


def log_softmax_row(row):
    if row.size == 0:
        return row
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


def layer_norm64(x, gamma, beta, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * gamma + beta


def cross_entropy64(logits, targets):
    rows = logits.reshape(-1, logits.shape[-1])
    losses = [row.max() + np.log(np.exp(row - row.max()).sum()) - row[target]
              for row, target in zip(rows, targets.reshape(-1))]
    return np.mean(losses)


def softmax_grad64(g, y, axis):
    """g times softmax's explicit Jacobian at its output y, row by row: d y_j / d x_i = y_j (delta_ij - y_i)."""
    def row_gradient(row):
        row_g, row_y = row[:row.size // 2], row[row.size // 2:]
        return (np.diag(row_y) - np.outer(row_y, row_y)) @ row_g
    both = np.concatenate([g, y], axis=axis)
    return per_row(lambda row: np.concatenate([row_gradient(row), np.zeros(row.size // 2)]), both, axis).take(
        range(g.shape[axis]), axis=axis)


def cross_entropy_grad64(g, logits, targets):
    """g / positions times (softmax - onehot), row by row in float64."""
    rows = logits.reshape(-1, logits.shape[-1])
    result = np.array([softmax_row(row) - np.eye(rows.shape[1])[target] for row, target in
                       zip(rows, targets.reshape(-1))], dtype=logits.dtype).reshape(logits.shape)
    return result * g / max(targets.size, 1)


def gather_rows(weight, indices):
    rows = [weight[index] for index in indices.reshape(-1)]
    return np.array(rows, dtype=weight.dtype).reshape(indices.shape + weight.shape[1:])


def scatter_add64(updates, indices, num_rows):
    table = np.zeros((num_rows, updates.shape[-1]), updates.dtype)
    for index, update in zip(indices.reshape(-1), updates.reshape(indices.size, updates.shape[-1])):
        table[index] += update
    return table


def cache_write64(cache, new, positions):
    out = cache.copy()
    for row, start in enumerate(positions):
        for step in range(new.shape[2]):
            out[row, :, start + step] = new[row, :, step]
    return out


def attention_weights64(q, k, mask, scale):
    return per_row(softmax_row, q @ np.swapaxes(k, -1, -2) * scale + mask, -1)


def attention64(q, k, v, mask, scale):
    return attention_weights64(q, k, mask, scale) @ v


def attention_grad64(q, k, v, mask, out, dout, scale):
    weights = attention_weights64(q, k, mask, scale)
    d_scores = weights * (dout @ np.swapaxes(v, -1, -2) - (dout * out).sum(-1, keepdims=True)) * scale
    return np.stack([d_scores @ k, np.swapaxes(d_scores, -1, -2) @ q, np.swapaxes(weights, -1, -2) @ dout])


def index_grid(slices):
    return np.ix_(*[np.arange(start, stop, step) for start, stop, step in slices])


def unslice64(x, slices, shape):
    table = np.zeros(shape, x.dtype)
    table[index_grid(slices)] = x
    return table


def concat64(*arrays, axis):
    shape = list(arrays[0].shape)
    shape[axis] = sum(array.shape[axis] for array in arrays)
    out, start = np.empty(shape, arrays[0].dtype), 0
    for array in arrays:
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, start + array.shape[axis])
        out[tuple(index)] = array
        start += array.shape[axis]
    return out


def mean64(x, axes, keepdims):
    count = math.prod(x.shape[axis] for axis in axes)
    return x.sum(axis=axes, keepdims=keepdims) / count
