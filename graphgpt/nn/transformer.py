"""The GPT of TinyTorch module 13, vectorised: MLP, MultiHeadAttention (all heads in one batched matmul, causal
mask), pre-norm TransformerBlock and GPT. Names and layouts are the seed's, so every node of the traced graph
carries a module path a TinyTorch student recognises (`blocks.0.attention.q_proj`)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..tensor import Tensor, as_tensor
from ..tracing import no_grad
from . import functional as F
from .dropout import Dropout
from .kv_cache import KVCache, LayerCache
from .layers import Embedding, LayerNorm, Linear
from .module import Module


class MLP(Module):
    """Linear -> GELU -> Linear, expanding to hidden_dim (4x embed_dim by default)."""

    def __init__(self, embed_dim: int, hidden_dim: Optional[int] = None):
        hidden_dim = hidden_dim or 4 * embed_dim
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.linear1 = Linear(embed_dim, hidden_dim)
        self.linear2 = Linear(hidden_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


def _require_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}")


class MultiHeadAttention(Module):
    def __init__(self, embed_dim: int, num_heads: int):
        _require_positive_int("embed_dim", embed_dim)
        _require_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, seq_len, _ = x.shape
        return x.reshape(batch, seq_len, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, T, hd)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, cache: Optional[LayerCache] = None) -> Tensor:
        """`mask`: bool (True = may attend) or additive float (0 / -inf), see F.scaled_dot_product_attention;
        (T, T), or (B, T, T) as the course passes it (given a head axis here), or (B, H, T, T). With a `cache`
        (graphgpt/nn/kv_cache.py), this step's keys and values are written into it at its positions and the
        queries attend over the whole cache: the mask is then (B, 1, T, max_seq_len)."""
        batch, seq_len, embed_dim = x.shape
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        if cache is not None:
            k, v = cache.write(k, v)
        if mask is not None:
            mask = as_tensor(mask)
            if mask.ndim == 3:  # one mask per sequence, shared by the heads
                mask = mask.reshape(mask.shape[0], 1, mask.shape[1], mask.shape[2])
        out, _ = F.scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, hd)
        out = out.permute(0, 2, 1, 3).reshape(batch, seq_len, embed_dim)  # heads back side by side
        return self.out_proj(out)


class TransformerBlock(Module):
    """Pre-norm block: x + attention(ln1(x)), then x + mlp(ln2(x)). With dropout_prob > 0 (the course's option;
    graphgpt's GPT uses none), each branch's output passes a Dropout before it joins the residual stream."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4, dropout_prob: float = 0.0):
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.attention = MultiHeadAttention(embed_dim, num_heads)
        self.ln1 = LayerNorm(embed_dim)
        self.ln2 = LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio))
        if dropout_prob:
            self.attention_dropout = Dropout(dropout_prob)
            self.mlp_dropout = Dropout(dropout_prob)

    def _dropped(self, name: str, x: Tensor) -> Tensor:
        dropout = getattr(self, name, None)
        return x if dropout is None else dropout(x)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, cache: Optional[LayerCache] = None) -> Tensor:
        x = x + self._dropped("attention_dropout", self.attention(self.ln1(x), mask, cache))
        x = x + self._dropped("mlp_dropout", self.mlp(self.ln2(x)))
        return x


class GPT(Module):
    """Token + learned position embeddings, num_layers pre-norm blocks, a final LayerNorm and a bias-free head.

    >>> model = GPT(vocab_size=65, embed_dim=64, num_layers=2, num_heads=4, max_seq_len=32)
    >>> model(Tensor(np.zeros((2, 8), np.int64))).shape
    (2, 8, 65)
    """

    def __init__(self, vocab_size: int, embed_dim: int, num_layers: int, num_heads: int, max_seq_len: int = 1024):
        for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("max_seq_len", max_seq_len)):
            _require_positive_int(name, value)
        _require_positive_int("num_layers", num_layers, minimum=0)  # no blocks: a bigram model, still a model
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.token_embedding = Embedding(vocab_size, embed_dim)
        self.position_embedding = Embedding(max_seq_len, embed_dim)
        self.blocks = [TransformerBlock(embed_dim, num_heads) for _ in range(num_layers)]
        self.ln_f = LayerNorm(embed_dim)
        self.lm_head = Linear(embed_dim, vocab_size, bias=False)
        # Buffers (tensors, not Parameters: never trained, not saved in checkpoints) for the longest sequence;
        # a forward takes their first seq_len positions, as nanoGPT's registered `bias` mask. So the graph of
        # one trace serves every length up to max_seq_len (compile(..., dynamic="seq")).
        self.position_ids = Tensor(np.arange(max_seq_len).reshape(1, max_seq_len))
        self.causal_mask = F.causal_mask(max_seq_len)  # (max_seq_len, max_seq_len)

    def forward(self, tokens, positions=None, cache: Optional[KVCache] = None) -> Tensor:
        """Logits (B, T, vocab_size) of `tokens` (B, T). With a `cache` (KVCache.for_model(model, B)), the tokens
        stand at `positions` (B,) onwards (an integer per sequence: where its first token goes), their keys and
        values are written into the cache there, and each attends to every cached position up to its own:
        the prompt at positions 0 fills the cache, then each step gives one token at the next position."""
        tokens = as_tensor(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"GPT expects tokens of shape (batch, seq_len), got {list(tokens.shape)}")
        batch, seq_len = tokens.shape
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {int(seq_len)} is longer than max_seq_len {self.max_seq_len}")
        if (positions is None) != (cache is None):
            raise ValueError("give positions and cache together (a cached step), or neither")
        token_emb = self.token_embedding(tokens)  # (B, T, C)
        if cache is None:
            pos_emb = self.position_embedding(self.position_ids[:, :seq_len])  # (1, T, C)
            mask = self.causal_mask[:seq_len, :seq_len]  # (T, T)
            layer_caches = [None] * len(self.blocks)
        else:
            positions = as_tensor(positions)
            query_positions = positions.reshape(batch, 1) + self.position_ids[:, :seq_len]  # (B, T)
            pos_emb = self.position_embedding(query_positions)  # (B, T, C)
            key_positions = self.position_ids.reshape(1, 1, self.max_seq_len)
            # (B, 1, T, max_seq_len): a query may attend to every cached position up to its own
            mask = (key_positions <= query_positions.reshape(batch, seq_len, 1)).reshape(
                batch, 1, seq_len, self.max_seq_len)
            layer_caches = [cache.layer(index, positions) for index in range(len(self.blocks))]
        x = token_emb + pos_emb
        for block, layer_cache in zip(self.blocks, layer_caches):
            x = block(x, mask, layer_cache) if layer_cache is not None else block(x, mask)
        x = self.ln_f(x)
        return self.lm_head(x)  # (B, T, vocab_size)

    def generate(self, prompt_tokens, max_new_tokens: int = 50, temperature: float = 1.0,
                 top_k: Optional[int] = None, seed: Optional[int] = None, use_cache: bool = True) -> Tensor:
        """The course's signature: `prompt_tokens` (batch, T) (or one sequence (T,)) followed by max_new_tokens
        sampled tokens each, as an int64 Tensor of the same rank. Each step divides the last logits by
        `temperature`, keeps the `top_k` largest (None: all; 1: greedy), and draws from the softmax; `seed` fixes
        the draws (sequence i draws with seed + i; None: a seed from graphgpt's generator, so graphgpt.manual_seed
        fixes them too). A prompt longer than max_seq_len conditions on its last max_seq_len tokens (a warning
        says so), and generating past max_seq_len slides the window.

        With `use_cache` (the default), all sequences decode together through compiled prefill and decode graphs
        over a KV cache (graphgpt/generation.py: compiled on the first call, kept while the model lives);
        use_cache=False runs the model eagerly on the whole context for every token. The same seed gives the same
        tokens either way."""
        import warnings

        from .. import random
        from ..training.sampling import check_sampling, context_note, next_token

        prompt = np.asarray(prompt_tokens.data if isinstance(prompt_tokens, Tensor) else prompt_tokens)
        rows = prompt.reshape(1, -1) if prompt.ndim == 1 else prompt
        if rows.ndim != 2 or rows.dtype.kind not in "iu" or rows.shape[1] == 0:
            raise ValueError(f"generate expects integer prompt tokens of shape (batch, T) or (T,), T >= 1, got "
                             f"{prompt.dtype} {list(prompt.shape)}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.vocab_size):
            raise ValueError(f"prompt tokens must lie in 0..{self.vocab_size - 1}, got values from {rows.min()} "
                             f"to {rows.max()}")
        if seed is None:
            seed = int(random._generator().integers(0, 1 << 62))
        check_sampling(max_new_tokens, temperature, top_k or 0, seed)
        if (message := context_note(rows.shape[1], self.max_seq_len, "the prompt")) is not None:
            warnings.warn(message, stacklevel=2)
        if use_cache:
            from ..generation import generate_cached
            result = generate_cached(self, rows.astype(np.int64), max_new_tokens, temperature, top_k or 0, seed,
                                     note=lambda text: warnings.warn(text, stacklevel=5))  # the caller's line
        else:
            result = np.empty((rows.shape[0], rows.shape[1] + max_new_tokens), np.int64)
            result[:, :rows.shape[1]] = rows
            with no_grad():
                for row in range(rows.shape[0]):
                    generator = np.random.default_rng(seed + row)
                    for length in range(rows.shape[1], result.shape[1]):
                        context = result[row:row + 1, max(length - self.max_seq_len, 0):length]
                        logits = self(Tensor(context)).data[0, -1]
                        result[row, length] = next_token(logits, temperature, top_k or 0, generator)
        return Tensor(result.reshape(-1) if prompt.ndim == 1 else result)
