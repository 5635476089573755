"""A hand-written, vectorised NumPy forward + backward of graphgpt's GPT and its loss, in BareGPT's style: one
hand-derived backward per layer, activations cached on the way forward. It is the baseline graphgpt's compiled
training step is measured against, written independently of graphgpt's ops (tests/test_baselines.py checks it
against graphgpt's gradients in float64, which shows it is the same math).

    loss, grads = forward_backward(params, tokens, targets, num_heads)   # params: name -> array
"""

from __future__ import annotations

import math

import numpy as np

GELU_C, GELU_K, EPS = math.sqrt(2.0 / math.pi), 0.044715, 1e-5


def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    centered = x - mean
    inverse_std = 1.0 / np.sqrt((centered * centered).mean(-1, keepdims=True) + EPS)
    normalized = centered * inverse_std
    return normalized * gamma + beta, (normalized, inverse_std, gamma)


def _layer_norm_backward(dy, cache):
    normalized, inverse_std, gamma = cache
    rows = dy.reshape(-1, dy.shape[-1])
    dgamma = (rows * normalized.reshape(rows.shape)).sum(0)
    dbeta = rows.sum(0)
    dnorm = dy * gamma
    dx = inverse_std * (dnorm - dnorm.mean(-1, keepdims=True)
                        - normalized * (dnorm * normalized).mean(-1, keepdims=True))
    return dx, dgamma, dbeta


def _linear(x2, weight, bias=None):
    y = x2 @ weight
    return y if bias is None else y + bias


def _block_forward(x, p, prefix, heads, mask):
    batch, length, width = x.shape
    head_dim = width // heads
    h, ln1 = _layer_norm(x, p[f"{prefix}.ln1.gamma"], p[f"{prefix}.ln1.beta"])
    h2 = h.reshape(-1, width)

    def split(name):  # (B*T, C) -> (B, H, T, hd)
        y = _linear(h2, p[f"{prefix}.attention.{name}.weight"], p[f"{prefix}.attention.{name}.bias"])
        return y.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
    scale = 1.0 / math.sqrt(head_dim)
    scores = q @ k.transpose(0, 1, 3, 2) * scale + mask
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    merged = (probs @ v).transpose(0, 2, 1, 3).reshape(-1, width)
    x1 = x + _linear(merged, p[f"{prefix}.attention.out_proj.weight"],
                     p[f"{prefix}.attention.out_proj.bias"]).reshape(x.shape)
    h, ln2 = _layer_norm(x1, p[f"{prefix}.ln2.gamma"], p[f"{prefix}.ln2.beta"])
    h2b = h.reshape(-1, width)
    u = _linear(h2b, p[f"{prefix}.mlp.linear1.weight"], p[f"{prefix}.mlp.linear1.bias"])
    t = np.tanh(GELU_C * (u + GELU_K * u * u * u))
    z = 0.5 * u * (1.0 + t)
    x2 = x1 + _linear(z, p[f"{prefix}.mlp.linear2.weight"], p[f"{prefix}.mlp.linear2.bias"]).reshape(x.shape)
    cache = dict(ln1=ln1, h2=h2, q=q, k=k, v=v, probs=probs, merged=merged, ln2=ln2, h2b=h2b, u=u, t=t, z=z,
                 scale=scale)
    return x2, cache


def _block_backward(dx2, p, g, prefix, heads, c):
    batch, length, width = dx2.shape
    head_dim = width // heads
    d2 = dx2.reshape(-1, width)
    # MLP: x2 = x1 + linear2(gelu(linear1(ln2(x1))))
    g[f"{prefix}.mlp.linear2.weight"] = c["z"].T @ d2
    g[f"{prefix}.mlp.linear2.bias"] = d2.sum(0)
    dz = d2 @ p[f"{prefix}.mlp.linear2.weight"].T
    u, t = c["u"], c["t"]
    du = dz * (0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_K * u * u))
    g[f"{prefix}.mlp.linear1.weight"] = c["h2b"].T @ du
    g[f"{prefix}.mlp.linear1.bias"] = du.sum(0)
    dh = (du @ p[f"{prefix}.mlp.linear1.weight"].T).reshape(dx2.shape)
    dln, g[f"{prefix}.ln2.gamma"], g[f"{prefix}.ln2.beta"] = _layer_norm_backward(dh, c["ln2"])
    dx1 = dx2 + dln
    # attention: x1 = x + out_proj(merge(softmax(q k^T * scale + mask) v))
    d1 = dx1.reshape(-1, width)
    g[f"{prefix}.attention.out_proj.weight"] = c["merged"].T @ d1
    g[f"{prefix}.attention.out_proj.bias"] = d1.sum(0)
    dmerged = (d1 @ p[f"{prefix}.attention.out_proj.weight"].T)
    dattention = dmerged.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)
    probs = c["probs"]
    dprobs = dattention @ c["v"].transpose(0, 1, 3, 2)
    dv = probs.transpose(0, 1, 3, 2) @ dattention
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) * c["scale"]
    dq = dscores @ c["k"]
    dk = dscores.transpose(0, 1, 3, 2) @ c["q"]
    dh2 = np.zeros_like(c["h2"])
    for name, dhead in (("q_proj", dq), ("k_proj", dk), ("v_proj", dv)):
        d = dhead.transpose(0, 2, 1, 3).reshape(-1, width)
        g[f"{prefix}.attention.{name}.weight"] = c["h2"].T @ d
        g[f"{prefix}.attention.{name}.bias"] = d.sum(0)
        dh2 += d @ p[f"{prefix}.attention.{name}.weight"].T
    dln, g[f"{prefix}.ln1.gamma"], g[f"{prefix}.ln1.beta"] = _layer_norm_backward(dh2.reshape(dx2.shape),
                                                                                   c["ln1"])
    return dx1 + dln


def forward_backward(params: dict, tokens: np.ndarray, targets: np.ndarray, num_heads: int):
    """Mean cross-entropy of next-token targets and the gradient of every parameter, by name."""
    p = params
    batch, length = tokens.shape
    vocab, width = p["token_embedding.weight"].shape
    dtype = p["token_embedding.weight"].dtype
    mask = np.triu(np.full((length, length), -np.inf, dtype), k=1)
    x = p["token_embedding.weight"][tokens] + p["position_embedding.weight"][:length]
    caches, block = [], 0
    while f"blocks.{block}.ln1.gamma" in p:
        x, cache = _block_forward(x, p, f"blocks.{block}", num_heads, mask)
        caches.append(cache)
        block += 1
    hf, lnf = _layer_norm(x, p["ln_f.gamma"], p["ln_f.beta"])
    hf2 = hf.reshape(-1, width)
    logits = hf2 @ p["lm_head.weight"]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    rows = np.arange(batch * length)
    flat_targets = targets.reshape(-1)
    loss = -log_probs[rows, flat_targets].mean()

    g = {}
    dlogits = np.exp(log_probs)
    dlogits[rows, flat_targets] -= 1.0
    dlogits /= batch * length
    g["lm_head.weight"] = hf2.T @ dlogits
    dx, g["ln_f.gamma"], g["ln_f.beta"] = _layer_norm_backward(
        (dlogits @ p["lm_head.weight"].T).reshape(batch, length, width), lnf)
    for block in reversed(range(len(caches))):
        dx = _block_backward(dx, p, g, f"blocks.{block}", num_heads, caches[block])
    token_grad = np.zeros((vocab, width), dtype)
    np.add.at(token_grad, tokens.reshape(-1), dx.reshape(-1, width))
    g["token_embedding.weight"] = token_grad
    position_grad = np.zeros_like(p["position_embedding.weight"])
    position_grad[:length] = dx.sum(0)
    g["position_embedding.weight"] = position_grad
    return loss, g
