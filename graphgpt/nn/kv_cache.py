"""The KV cache of generation: every layer's keys and values for every position generated so far, in one array of
shape (num_layers, 2, batch, heads, max_seq_len, head_dim), so a new token's attention reads the past instead of
recomputing it (TinyTorch module 14's `KVCache`, and the static cache of torch.compile and XLA users: its size is
fixed, so one compiled decode graph serves every step).

`GPT.forward(tokens, positions, cache)` writes each layer's new keys and values at the tokens' positions and
attends over the whole cache, masking the positions after each query's own. Eagerly the writes land in the array at
once; in a compiled graph they are graph updates (`cache_write` nodes, computed in place into the cache's array,
as an optimizer step writes its weights), the cache being graph state named `kv_cache.blocks.N.keys` / `.values`.

The course's bookkeeping (`update`, `get`, `advance`, `reset`, a position `seq_pos`) is here too, for code written
against it; graphgpt's own decoding passes positions explicitly instead (graphgpt/generation.py).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from ..tensor import Tensor, as_tensor
from .state import advance, current

STATE_PREFIX = "kv_cache."


class LayerCache(NamedTuple):
    """One attention layer's part of a cache, as its forward needs it: key and value state tensors, each (batch,
    heads, max_seq_len, head_dim), and the position of each sequence's first new token, (batch,) integers."""

    keys: Tensor
    values: Tensor
    positions: Tensor

    def write(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys and values (batch, heads, n, head_dim) at the positions; returns the whole
        updated caches, which the attention reads."""
        written = []
        for state, new in ((self.keys, keys), (self.values, values)):
            updated = current(state).cache_write(new, self.positions)
            advance(state, updated)
            written.append(updated)
        return written[0], written[1]


class KVCache:
    """Keys and values of `num_layers` attention layers for `batch_size` sequences of up to `max_seq_len`
    positions, zero at first.

    >>> cache = KVCache(batch_size=1, max_seq_len=16, num_layers=2, num_heads=4, head_dim=8)
    >>> cache.data.shape, cache.nbytes
    ((2, 2, 1, 4, 16, 8), 8192)
    """

    def __init__(self, batch_size: int, max_seq_len: int, num_layers: int, num_heads: int, head_dim: int,
                 dtype=np.float32):
        for name, value in (("batch_size", batch_size), ("max_seq_len", max_seq_len), ("num_heads", num_heads),
                            ("head_dim", head_dim), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name != "num_layers"):
                raise ValueError(f"KVCache {name} must be a whole number of at least {int(name != 'num_layers')}, "
                                 f"got {value!r}")
        self.batch_size, self.max_seq_len = int(batch_size), int(max_seq_len)
        self.num_layers, self.num_heads, self.head_dim = int(num_layers), int(num_heads), int(head_dim)
        self.data = np.zeros((num_layers, 2, batch_size, num_heads, max_seq_len, head_dim), dtype)
        # Views of `data` (C-contiguous, so a compiled run writes through them into it).
        self.keys = [Tensor(self.data[layer, 0], dtype=dtype) for layer in range(num_layers)]
        self.values = [Tensor(self.data[layer, 1], dtype=dtype) for layer in range(num_layers)]
        self.seq_pos = 0

    @classmethod
    def for_model(cls, model, batch_size: int = 1) -> "KVCache":
        """A cache the size a GPT needs: its layers, heads, head size and max_seq_len."""
        return cls(batch_size, model.max_seq_len, model.num_layers, model.num_heads,
                   model.embed_dim // model.num_heads)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) of every layer's keys and values: the state a compiled graph reads and updates."""
        for layer in range(self.num_layers):
            yield f"{STATE_PREFIX}blocks.{layer}.keys", self.keys[layer]
            yield f"{STATE_PREFIX}blocks.{layer}.values", self.values[layer]

    def layer(self, index: int, positions) -> LayerCache:
        """Layer `index`'s keys and values with the positions new tokens are written at."""
        return LayerCache(self.keys[index], self.values[index], as_tensor(positions))

    # ---- the TinyTorch course's interface ----------------------------------------------------------------------
    def update(self, layer_idx: int, key, value) -> None:
        """Write a layer's key and value for the next position, seq_pos (eagerly: each (batch, heads, 1, dim))."""
        if self.seq_pos >= self.max_seq_len:
            raise ValueError(f"the KV cache is full: all {self.max_seq_len} positions are written; reset() it")
        positions = np.full(self.batch_size, self.seq_pos, np.int64)
        self.layer(layer_idx, positions).write(as_tensor(key), as_tensor(value))

    def get(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        """A layer's keys and values of the positions advanced past so far: (batch, heads, seq_pos, dim) each."""
        return (Tensor(self.keys[layer_idx].data[:, :, :self.seq_pos]),
                Tensor(self.values[layer_idx].data[:, :, :self.seq_pos]))

    def advance(self) -> None:
        """Move to the next position once every layer has written its entry for this one."""
        self.seq_pos += 1

    def reset(self) -> None:
        """Forget every entry: zeros, position 0."""
        self.data[...] = 0
        self.seq_pos = 0

    def __repr__(self) -> str:
        return (f"KVCache(layers={self.num_layers}, batch={self.batch_size}, heads={self.num_heads}, "
                f"max_seq_len={self.max_seq_len}, head_dim={self.head_dim}, {self.nbytes / 2**20:.2f} MiB, "
                f"seq_pos={self.seq_pos})")
