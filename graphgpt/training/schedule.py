"""The learning-rate schedule of `graphgpt train`, nanoGPT's get_lr: a linear warmup over the first `warmup`
steps, then a cosine decay from the peak `lr` to `lr_min` at the last step.

The trainer sets the optimizer's lr_scale to learning_rate(...) / lr before each step (graphgpt/optim.py): the
compiled step reads that scale at every run, so the rate changes per step without recompiling. The rate is a
function of the step alone, so a resumed run continues the schedule where the checkpoint left it.
"""

from __future__ import annotations

import math


def learning_rate(iteration: int, lr: float, warmup: int, lr_min: float, total: int) -> float:
    """The learning rate of 0-based step `iteration` of a run of `total` steps, as nanoGPT's get_lr with
    lr_decay_iters = total: (iteration + 1) / (warmup + 1) of the peak during warmup, then half a cosine period
    from lr down to lr_min."""
    if iteration < warmup:
        return lr * (iteration + 1) / (warmup + 1)
    if iteration >= total:
        return lr_min
    decay_ratio = (iteration - warmup) / (total - warmup)
    coefficient = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return lr_min + coefficient * (lr - lr_min)


def default_lr_min(lr: float) -> float:
    """The floor of the decay when none is given: a tenth of the peak, as nanoGPT advises (after Chinchilla)."""
    return lr / 10
