"""graphgpt's GPT in JAX (jax.numpy, CPU), built from the same float32 weights, for the benchmark: the loss written
in jax.numpy and jax.jit(jax.value_and_grad(loss)) compiled by XLA for the batch's shapes. A benchmark-only peer
(`pip install "jax[cpu]"`); graphgpt never imports it.

    step = make_jax_step(params, num_heads, tokens, targets)   # XLA compiles here, for these shapes
    loss, grads = step(tokens, targets)                         # forward + backward; grads by graphgpt name
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-5


def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(-1, keepdims=True)
    return centered / jnp.sqrt(variance + EPS) * gamma + beta


def gpt_loss(w: dict, tokens, targets, num_heads: int):
    """Mean next-token cross-entropy of graphgpt's GPT with weights `w` (graphgpt parameter names)."""
    batch, length = tokens.shape
    width = w["token_embedding.weight"].shape[1]
    head_dim = width // num_heads
    mask = jnp.triu(jnp.full((length, length), -jnp.inf, w["token_embedding.weight"].dtype), k=1)
    x = w["token_embedding.weight"][tokens] + w["position_embedding.weight"][:length]
    block = 0
    while f"blocks.{block}.ln1.gamma" in w:  # the weights' names are static: the loop unrolls when traced
        p = f"blocks.{block}"
        h = _layer_norm(x, w[f"{p}.ln1.gamma"], w[f"{p}.ln1.beta"])

        def heads(name):
            y = h @ w[f"{p}.attention.{name}.weight"] + w[f"{p}.attention.{name}.bias"]
            return y.reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        scores = q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(head_dim)) + mask
        merged = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        x = x + merged @ w[f"{p}.attention.out_proj.weight"] + w[f"{p}.attention.out_proj.bias"]
        h = _layer_norm(x, w[f"{p}.ln2.gamma"], w[f"{p}.ln2.beta"])
        hidden = jax.nn.gelu(h @ w[f"{p}.mlp.linear1.weight"] + w[f"{p}.mlp.linear1.bias"], approximate=True)
        x = x + hidden @ w[f"{p}.mlp.linear2.weight"] + w[f"{p}.mlp.linear2.bias"]
        block += 1
    logits = _layer_norm(x, w["ln_f.gamma"], w["ln_f.beta"]) @ w["lm_head.weight"]
    log_probs = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
    return -jnp.take_along_axis(log_probs, targets.reshape(-1, 1), axis=-1).mean()


def make_jax_step(params: dict, num_heads: int, tokens: np.ndarray, targets: np.ndarray):
    """A function returning (loss, gradients by name) of one forward + backward as JAX arrays, waited for (JAX
    dispatches asynchronously: a step that returned at once would be timed as nothing). It is traced, lowered and
    compiled by XLA here, for the shapes of `tokens` and `targets`, so the first call runs as every later one."""
    weights = {name: jnp.asarray(value) for name, value in params.items()}
    loss_and_grads = jax.jit(jax.value_and_grad(functools.partial(gpt_loss, num_heads=num_heads)))
    # Token ids as int32: JAX's default integer width (64-bit ones need jax_enable_x64, process-wide).
    executable = loss_and_grads.lower(weights, tokens.astype(np.int32), targets.astype(np.int32)).compile()

    def step(tokens: np.ndarray, targets: np.ndarray):
        loss, grads = executable(weights, tokens.astype(np.int32), targets.astype(np.int32))
        return jax.block_until_ready((loss, grads))

    return step
