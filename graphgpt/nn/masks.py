"""Attention masks: the two conventions graphgpt accepts, told apart by dtype, and the refusal of the ambiguous one.

- bool: True = may attend (the TinyTorch course's and torch's `attn_mask` convention), applied as
  `mask.where(scores, -inf)`;
- float: added to the scores (0 = attend, -inf = masked, or any finite bias such as ALiBi's), as graphgpt's own
  `causal_mask` and nanoGPT's.

A float mask holding only 0s and 1s is refused: it is the course's 1 = may attend mask in float clothes, and adding
it would mask nothing (silently wrong). An all-zero float mask is accepted (additive: nothing masked).

What is checked where (the mask's values are needed, and are not always known):
- eagerly: the values themselves, at every call (two vectorised comparisons, small next to attention's matmuls);
- while graphgpt.compile traces: the values the mask is known to hold when it is traced. A constant (a tensor the
  model made, or one from a closure) is read; a module's parameter or buffer (the GPT's `causal_mask`) is read as it
  is at trace time, without freezing it into the graph; a mask computed from them by value-preserving ops (slice,
  reshape, transpose, broadcast_to, cast, where) is followed back to them. A mask computed from the graph's inputs
  or by arithmetic is not known until it runs, so it is not checked. Nor is a buffer assigned new values after
  compiling: the graph reads it live, and a run does not re-check it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..tensor import Tensor, as_tensor
from ..tracing import current_provenance, current_trace

CONVENTIONS = ("graphgpt adds a float mask to the scores (0 = attend, -inf = masked), so 1/0 would mask nothing: "
               "pass a bool mask (True = may attend: mask.astype('bool'), or nn.create_causal_mask(T)) or an "
               "additive one (0 / -inf: nn.functional.causal_mask(T))")

# Ops whose result holds only values of its first input (a subset of them, or a converted copy for cast).
_VALUE_PRESERVING = frozenset({"slice", "reshape", "transpose", "broadcast_to", "cast"})


def visible_values(tensor: Tensor) -> Optional[np.ndarray]:
    """Values `tensor` holds (or a superset of them) when they can be known now, else None."""
    trace = current_trace()
    if tensor._traced is None:  # concrete: eager, a constant of the trace, or a parameter/buffer as it is now
        return tensor._data
    if tensor._trace is not trace:
        return None
    return _graph_values(trace, tensor._traced)


def _graph_values(trace, value) -> Optional[np.ndarray]:
    if value.kind == "param":
        bound = trace.bound_tensor(value)
        return None if bound is None else bound._data
    node = value.producer
    if node is None:  # a graph input: known only when the graph runs
        return None
    if node.op == "constant":
        return node.attrs["value"]
    if node.op in _VALUE_PRESERVING:
        source = _graph_values(trace, node.inputs[0])
        if source is None or node.op != "cast":
            return source
        return source.astype(node.attrs["dtype"])
    if node.op == "where":  # either branch's values
        branches = [_graph_values(trace, branch) for branch in node.inputs[1:]]
        if any(branch is None for branch in branches):
            return None
        return np.concatenate([branch.ravel() for branch in branches])
    return None


def _holds_only_zeros_and_ones(values: np.ndarray) -> bool:
    """Only 0s and 1s, at least one 1 (an all-zero float mask is additive: it masks nothing)."""
    ones = values == 1
    return bool(np.all(ones | (values == 0)) and np.any(ones))


def checked_mask(mask, scores_dtype: str) -> Tensor:
    """`mask` as a bool tensor (True = may attend) or an additive float tensor of the scores' dtype; refuses
    other dtypes and a float mask of 0s and 1s (see the module docstring for what can be checked where)."""
    mask = as_tensor(mask)
    where = current_provenance().describe()
    if mask.dtype == "bool":
        return mask
    if not mask.type.is_float:
        raise ValueError(f"attention mask at {where}: expected a bool mask (True = may attend) or a float mask "
                         f"added to the scores (0 / -inf), got {mask.type}")
    values = visible_values(mask)
    if values is not None and values.size and _holds_only_zeros_and_ones(values):
        raise ValueError(f"attention mask at {where}: a {mask.type} mask of only 0s and 1s looks like a "
                         f"1 = may attend mask, but {CONVENTIONS}")
    return mask if mask.dtype == scores_dtype else mask.astype(scores_dtype)
