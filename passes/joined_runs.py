"""Runs of consecutive tensors joined into one vector, by one rule for both places that join: the optimizer's
update (graphgpt/optim.py: each run's parameters, gradients and state updated as one vector) and a data-parallel
step's gradient buckets (passes/gradient_buckets.py: each run's gradients summed over the shards as one vector).
With the same rule a bucket is exactly a run the optimizer joins, so its update reads the summed bucket as it is.
"""

from __future__ import annotations

from typing import Sequence

# The longest run joined into one vector (elements): joining pays where a tensor's work is a few short passes, each
# costing more in the call than in its work (the `graphgpt train` GPT's 37 parameters of 64 to 16K elements: its
# compiled update 0.76 to 0.40 ms), and the joined copies (the parameters, gradients and state slots, ~6 vectors of
# a run alive at once) stay a few MiB however large the model. A tensor this large gains nothing: it stays alone.
JOINED_ELEMENTS = 1 << 17


def joined_runs(tensors: Sequence, limit: int = JOINED_ELEMENTS) -> list[list[int]]:
    """Positions of `tensors` (anything with .size and .dtype) in runs of consecutive ones of one dtype and known
    sizes, each run at most `limit` elements long (a tensor that large alone)."""
    runs: list[list[int]] = []
    length = 0
    for index, tensor in enumerate(tensors):
        size = tensor.size
        if runs and isinstance(size, int) and length + size <= limit and tensor.dtype == tensors[runs[-1][0]].dtype:
            runs[-1].append(index)
            length += size
        else:
            runs.append([index])
            length = size if isinstance(size, int) else limit + 1  # nothing joins it
    return runs
