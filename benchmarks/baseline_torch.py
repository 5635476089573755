"""graphgpt's GPT in PyTorch on CPU, built from the same float32 weights, for the benchmark: eager, or its forward
through torch.compile (inductor: generated C++/OpenMP loops for the elementwise and row-wise work, GEMMs left to
MKL/oneDNN; AOTAutograd compiles the backward too). Requires torch (`pip install torch==2.13.0`); graphgpt itself
never does. Thread count is left to torch (its default here is the number of cores) unless the benchmark's
--threads says otherwise.

    step = make_torch_step(params, num_heads);  loss = step(tokens, targets)   # forward + backward, eager
    step = make_torch_step(params, num_heads, compiled=True)  # torch.compile: the first call compiles
    reason = inductor_unavailable()                            # None, or why torch.compile cannot run here
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def gpt_loss(w: dict, tokens: torch.Tensor, targets: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Mean next-token cross-entropy of graphgpt's GPT with weights `w` (graphgpt parameter names): the forward
    that the eager step runs and torch.compile compiles."""
    batch, length = tokens.shape
    width = w["token_embedding.weight"].shape[1]
    head_dim = width // num_heads
    mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
    x = w["token_embedding.weight"][tokens] + w["position_embedding.weight"][:length]
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
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_torch_step(params: dict, num_heads: int, compiled: bool = False):
    """A function running forward + backward (loss.backward()) on `tokens`, `targets`; gradients are left in
    each tensor's .grad (zeroed first) and readable with `gradients(step)`. `compiled`: the forward goes through
    torch.compile (inductor), compiled on the first call (into $TORCHINDUCTOR_CACHE_DIR)."""
    weights = {name: torch.tensor(value, requires_grad=True) for name, value in params.items()}
    loss_of = torch.compile(gpt_loss, backend="inductor") if compiled else gpt_loss

    def step(tokens: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        for tensor in weights.values():
            tensor.grad = None
        loss = loss_of(weights, torch.from_numpy(tokens), torch.from_numpy(targets), num_heads)
        loss.backward()
        return loss

    step.weights = weights
    return step


def inductor_unavailable() -> Optional[str]:
    """None when torch.compile's inductor can build CPU kernels here, else why not: it compiles the C++ it
    generates with the compiler named by $CXX (g++ by default)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as error:  # inductor's own check: InvalidCxxCompiler, or a compiler that does not run
        return f"no C++ compiler for inductor's CPU kernels ({type(error).__name__}: {error}); set CXX or install g++"
    return None


def gradients(step) -> dict[str, np.ndarray]:
    """The gradients of the latest step, by graphgpt parameter name."""
    return {name: tensor.grad.numpy() for name, tensor in step.weights.items()}
