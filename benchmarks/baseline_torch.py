"""graphgpt's GPT in PyTorch eager (CPU), built from the same float32 weights, for the benchmark. Requires torch
(`pip install torch==2.13.0`); graphgpt itself never does. Thread count is left to torch (its default here is the
number of cores) unless the benchmark's --threads says otherwise.

    step = make_torch_step(params, num_heads);  loss = step(tokens, targets)   # forward + backward
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def make_torch_step(params: dict, num_heads: int):
    """A function running forward + backward (loss.backward()) on `tokens`, `targets`; gradients are left in
    each tensor's .grad (zeroed first) and readable with `gradients(step)`."""
    weights = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}

    def step(tokens: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        for tensor in weights.values():
            tensor.grad = None
        w = weights
        batch, length = tokens.shape
        width = w["token_embedding.weight"].shape[1]
        head_dim = width // num_heads
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        x = w["token_embedding.weight"][torch.from_numpy(tokens)] + w["position_embedding.weight"][:length]
        block = 0
        while f"blocks.{block}.ln1.gamma" in w:
            p = f"blocks.{block}"
            h = F.layer_norm(x, (width,), w[f"{p}.ln1.gamma"], w[f"{p}.ln1.beta"], eps=1e-5)

            def heads(name):
                y = h @ w[f"{p}.attention.{name}.weight"] + w[f"{p}.attention.{name}.bias"]
                return y.view(batch, length, num_heads, head_dim).transpose(1, 2)

            q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(head_dim)) + mask
            merged = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
            x = x + merged @ w[f"{p}.attention.out_proj.weight"] + w[f"{p}.attention.out_proj.bias"]
            h = F.layer_norm(x, (width,), w[f"{p}.ln2.gamma"], w[f"{p}.ln2.beta"], eps=1e-5)
            hidden = F.gelu(h @ w[f"{p}.mlp.linear1.weight"] + w[f"{p}.mlp.linear1.bias"], approximate="tanh")
            x = x + hidden @ w[f"{p}.mlp.linear2.weight"] + w[f"{p}.mlp.linear2.bias"]
            block += 1
        x = F.layer_norm(x, (width,), w["ln_f.gamma"], w["ln_f.beta"], eps=1e-5)
        logits = x @ w["lm_head.weight"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1))
        loss.backward()
        return loss

    step.weights = weights
    return step


def gradients(step) -> dict[str, np.ndarray]:
    """The gradients of the latest step, by graphgpt parameter name."""
    return {name: tensor.grad.numpy() for name, tensor in step.weights.items()}
