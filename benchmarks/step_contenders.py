"""The contenders of benchmarks/train_step.py: each runs one GPT training step (forward + backward, no update) from
the same float32 weights and batch, and says what it computed (loss, gradients by parameter name), so the
benchmark checks they all do the same work before timing them. Peers whose package is missing are skipped, with
the reason.

    model, tokens, targets = build(CONFIGS["tiny"])
    builders, skipped = contender_builders(CONFIGS["tiny"], model, tokens, targets, backend="numpy")
    contender = builders["jax"]()            # compiles, where the contender compiles ahead of its first run
    loss, grads = contender.outcome(contender.run())
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphgpt  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from baseline_numpy import forward_backward  # noqa: E402

CONFIGS = {
    "medium": dict(vocab=65, embed=256, layers=6, heads=8, seq_len=128, batch=8),
    "tiny": dict(vocab=65, embed=64, layers=2, heads=4, seq_len=32, batch=8),
    "wide": dict(vocab=512, embed=512, layers=4, heads=8, seq_len=128, batch=8),
    # graphgpt train's default model and batch (graphgpt/training/options.py), on its default text's 99 characters
    "train": dict(vocab=99, embed=64, layers=2, heads=4, seq_len=64, batch=16),
}


def build(config: dict):
    """The model (seeded) and one batch of tokens and next-token targets."""
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(config["vocab"], config["embed"], config["layers"], config["heads"],
                            max_seq_len=config["seq_len"])
    rng = np.random.default_rng(0)
    shape = (config["batch"], config["seq_len"])
    return model, rng.integers(0, config["vocab"], shape), rng.integers(0, config["vocab"], shape)


@dataclass
class Contender:
    run: Callable[[], object]  # one forward + backward step
    outcome: Callable[[object], tuple[float, dict]]  # (loss, gradients by name) from what run() returned
    compiled: object = field(default=None)  # graphgpt's Compiled, for the benchmark's reports


def contender_builders(config: dict, model, tokens, targets, backend: str = "numpy"):
    """(name -> a function building that contender, ready to run; name -> why a contender is skipped). Building
    compiles: graphgpt.compile, jax.jit's XLA compile, torch.compile's (its first step, which is when it compiles).
    `backend` computes graphgpt's compiled steps."""
    heads, params = config["heads"], model.state_dict()
    builders, skipped = {}, {}

    def graphgpt_step(**options):
        def make() -> Contender:
            compiled = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, backend=backend, **options)
            return Contender(lambda: compiled.run(tokens, targets),
                             lambda loss: (float(loss), {name: np.array(g) for name, g in compiled.grads.items()}),
                             compiled)
        return make

    def eager() -> Contender:
        def step():
            model.zero_grad()
            loss = F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets))
            loss.backward()
            return loss
        return Contender(step, lambda loss: (float(loss.data),
                                             {name: p.grad for name, p in model.named_parameters()}))

    def hand_written(make_step):
        return lambda: Contender(make_step(), lambda result: (float(result[0]), result[1]))

    builders["compiled"] = graphgpt_step()
    builders["compiled-whole"] = graphgpt_step(shards=1)
    builders["compiled-nopass"] = graphgpt_step(passes=[])
    builders["eager"] = eager
    builders["numpy"] = hand_written(lambda: lambda: forward_backward(params, tokens, targets, heads))
    builders["numpy-split"] = hand_written(lambda: numpy_split_step(params, tokens, targets, heads))
    try:
        import torch  # noqa: F401
    except ImportError:
        skipped["torch"] = skipped["torch-compile"] = "torch is not installed: `pip install torch==2.13.0`"
    else:
        from baseline_torch import inductor_unavailable

        builders["torch"] = torch_builder(params, heads, tokens, targets, compiled=False)
        reason = inductor_unavailable()
        if reason is None:
            builders["torch-compile"] = torch_builder(params, heads, tokens, targets, compiled=True)
        else:
            skipped["torch-compile"] = reason
    try:
        import jax  # noqa: F401
    except ImportError:
        skipped["jax"] = 'jax is not installed: `pip install "jax[cpu]"` (a benchmark-only peer)'
    else:
        from baseline_jax import make_jax_step

        def jax_step():
            step = make_jax_step(params, heads, tokens, targets)
            return lambda: step(tokens, targets)
        builders["jax"] = hand_written(jax_step)
    return builders, skipped


def torch_builder(params: dict, heads: int, tokens, targets, compiled: bool):
    """PyTorch's step, eager or through torch.compile; a compiled one is run once here, which compiles it."""
    from baseline_torch import gradients, make_torch_step

    def make() -> Contender:
        torch_step = make_torch_step(params, heads, compiled=compiled)
        if compiled:
            torch_step(tokens, targets)
        return Contender(lambda: torch_step(tokens, targets), lambda loss: (loss.item(), gradients(torch_step)))
    return make


def numpy_split_step(params: dict, tokens, targets, heads: int):
    """The hand-written step over two half batches on two threads (BLAS limited to one thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import ThreadpoolController

    pool, blas = ThreadPoolExecutor(1), ThreadpoolController()
    half = tokens.shape[0] // 2

    def step():
        with blas.limit(limits=1, user_api="blas"):
            other = pool.submit(forward_backward, params, tokens[half:], targets[half:], heads)
            loss, grads = forward_backward(params, tokens[:half], targets[:half], heads)
            other_loss, other_grads = other.result()
        return (loss + other_loss) / 2, {name: (grads[name] + other_grads[name]) / 2 for name in grads}
    return step
