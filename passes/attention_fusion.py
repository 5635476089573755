"""Attention fusion: find scaled dot-product attention written out op by op in a forward graph and replace it by
the fused `attention` op (ir/ops/attention.py), whose kernels never hold the whole (T, S) scores. The pattern is
attention as people write it, not only as graphgpt.nn does:

    weights = softmax(q @ k.transpose(-2, -1) * scale + mask)      # or / sqrt(d); or mask.where(scores, -inf)
    out = weights @ v

- the scale: a multiplication by a scalar constant (either side), a division by one, or none;
- the masks: any of added ones (float, 0 / -inf or any bias) and bool ones, `where(mask, scores, -inf)`, in any
  order, combined into one additive mask (where(mask, 0, -inf)); or none (a zero mask);
- the weights: read by the final matmul only (weights a model returns or drops out are left alone, composite).

It runs on the forward graph, before autodiff, so the backward is the fused op's own gradient kernel. It changes
results within float32 rounding (the gradient's sums are taken block by block, and a division by sqrt(d) becomes a
multiplication by its reciprocal), so it runs only with the fast-math flag `reassociate` (passes/manager.py).
Graphs with symbolic sizes are left as they are: the fused kernel's blocks are cut at concrete sizes.

    result = fuse_attention(forward_graph)
    result.summary   # {"attention fused": 6}
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from graphgpt.ir import Graph, Node, ShapeError, TensorType, Value, get_op
from graphgpt.ir.ops.rules import broadcast_shapes

from .dead_nodes import rewrite_dropping_dead, value_uses
from .result import PassResult
from .rewrite import RewriteContext


def _constant_scalar(value: Value) -> Optional[float]:
    array = RewriteContext.constant_value(value)
    return float(array) if array is not None and array.size == 1 and array.dtype.kind == "f" else None


def _scaled_scores(value: Value) -> Optional[tuple[Node, float]]:
    """(the q @ k^T node, the scale) when `value` is that product times a constant, over one, or itself."""
    producer = value.producer
    if producer is None:
        return None
    scale = 1.0
    if producer.op in ("mul", "div"):
        first, second = producer.inputs
        constant = _constant_scalar(second)
        if constant is None and producer.op == "mul":
            first, constant = second, _constant_scalar(first)
        if constant is None or constant == 0:
            return None
        scale = constant if producer.op == "mul" else 1.0 / constant
        producer = first.producer
    if producer is None or producer.op != "matmul":
        return None
    keys_t = producer.inputs[1].producer
    rank = producer.output.type.rank
    swap_last_two = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    if keys_t is None or keys_t.op != "transpose" or tuple(keys_t.attrs["perm"]) != swap_last_two:
        return None
    return producer, scale


def _is_minus_infinity(value: Value) -> bool:
    filled = RewriteContext.constant_value(value)
    return filled is not None and filled.size == 1 and bool(np.isneginf(filled).all())


def _masks_applied(value: Value, depth: int = 0) -> Optional[tuple[Value, list[tuple[str, Value]]]]:
    """(the scaled scores, the masks applied to them on the way to `value`, first applied first: ('add', bias) or
    ('bool', condition) for where(condition, scores, -inf)), or None when `value` is not scores masked so."""
    if _scaled_scores(value) is not None:
        return value, []
    producer = value.producer
    if producer is None or depth > 4:
        return None
    candidates = []
    if producer.op == "add":
        candidates = [(inner, ("add", other)) for inner, other in (producer.inputs, producer.inputs[::-1])]
    elif producer.op == "where" and _is_minus_infinity(producer.inputs[2]):
        candidates = [(producer.inputs[1], ("bool", producer.inputs[0]))]
    for inner, mask in candidates:
        found = _masks_applied(inner, depth + 1)
        if found is not None:
            return found[0], found[1] + [mask]
    return None


def _match(node: Node, uses: Counter) -> Optional[dict]:
    """The parts of the attention ending at matmul `node`, or None."""
    if node.op != "matmul":
        return None
    weights, values = node.inputs
    softmax = weights.producer
    if (softmax is None or softmax.op != "softmax" or softmax.attrs["axis"] != weights.type.rank - 1
            or uses[weights.id] != 1):
        return None
    masked = _masks_applied(softmax.inputs[0])
    if masked is None:
        return None
    scores, masks = masked
    product, scale = _scaled_scores(scores)
    queries, keys = product.inputs[0], product.inputs[1].producer.inputs[0]
    shapes = [value.type.shape for value in (queries, keys, values, *(mask for _, mask in masks))]
    if not all(isinstance(size, int) for shape in shapes for size in shape):
        return None
    return dict(q=queries, k=keys, v=values, masks=masks, scale=scale)


def _combined_mask(masks: list[tuple[str, Value]], context: RewriteContext, dtype) -> Value:
    """One additive mask doing what `masks` did, in their order: where(c, s + b, -inf) == s + where(c, b, -inf)
    and (s + b1) + b2 == s + (b1 + b2) up to rounding; no mask is a zero one."""
    combined = None
    for how, mask in masks:
        mask = context.mapped(mask)
        if how == "add":
            combined = mask if combined is None else context.emit("add", [combined, mask])
        else:
            kept = combined if combined is not None else context.constant(np.zeros((), dtype))
            combined = context.emit("where", [mask, kept, context.constant(np.array(-np.inf, dtype))])
    return combined if combined is not None else context.constant(np.zeros((1, 1), dtype))


def _combined_mask_type(masks: list[tuple[str, Value]], dtype: str) -> TensorType:
    """The type _combined_mask's mask will have (ShapeError if the masks do not combine), known before any node
    is made: a pass that fuses nothing must leave the graph as it was."""
    if any(how == "add" and mask.type.dtype != dtype for how, mask in masks):
        raise ShapeError(f"an added mask is not {dtype}")
    return TensorType(broadcast_shapes(*(mask.type.shape for _, mask in masks)) if masks else (1, 1), dtype)


def _fused(node: Node, inputs, context: RewriteContext, uses: Counter) -> Optional[Value]:
    parts = _match(node, uses)
    if parts is None:
        return None
    q, k, v = (context.mapped(parts[name]) for name in ("q", "k", "v"))
    try:
        mask_type = _combined_mask_type(parts["masks"], q.type.dtype)
        get_op("attention").infer_type([q.type, k.type, v.type, mask_type], {"scale": parts["scale"]})
    except ShapeError:  # batch axes that broadcast, masks of another dtype or shape: left composite
        return None
    mask = _combined_mask(parts["masks"], context, q.type.numpy_dtype)
    return context.emit("attention", [q, k, v, mask], {"scale": parts["scale"]})


def fuse_attention(graph: Graph) -> PassResult:
    """Replace each matched attention by one `attention` node (then drop the composite's dead nodes)."""
    uses = value_uses(graph)

    def fuse_scaled_dot_product_attention(node, inputs, context):
        return _fused(node, inputs, context, uses)

    new_graph, count = rewrite_dropping_dead(graph, fuse_scaled_dot_product_attention, "fuse_attention")
    return PassResult(new_graph, {"attention fused": count})
