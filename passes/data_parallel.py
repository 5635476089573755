"""Data-parallel splitting, proved from the graph: may a training step's batch be cut into equal shards that each
run the same graph, with the whole batch's loss and gradients combined from the shards'?

That holds when no example's computation reads another example: axis 0 of every graph input (the batch) flows
through the forward graph without being mixed, and the loss is the mean (or the sum) of a value carrying the
batch. Then loss(batch) = mean (or sum) over shards of loss(shard), and by linearity so are the gradients.

The proof walks the forward graph once, op by op, and says which values carry the batch on their axis 0 ("each
shard's rows are its own"). It is conservative: an op without a rule here that receives a batch-carrying input
makes the answer no, naming the node. `shard_mismatch` then checks that the graph traced at the shard's batch
size is the same program (same ops and attributes; batch-carrying values with axis 0 divided by the shard
count, every other type unchanged), so running it on each shard computes exactly those rows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from graphgpt.ir import Graph, Node, OpKind, get_op

# How a batch-reducing scalar combines across shards.
MEAN, SUM = "mean", "sum"

# Ops whose attributes hold shapes, which differ between the whole batch and a shard.
_SHAPE_ATTRS = {"reshape": "shape", "broadcast_to": "shape", "slice": "slices", "unslice": "shape"}


class _Proof:
    """Walks a forward graph: `batched` holds the ids of values carrying the batch on axis 0, `reduced` maps a
    scalar that reduces the whole batch to MEAN or SUM. `problem` is the first reason splitting is not exact."""

    def __init__(self, graph: Graph, shards: int):
        self.shards = shards
        self.batched: set[int] = set()
        self.reduced: dict[int, str] = {}
        self.problem: Optional[str] = None
        for value in graph.inputs:
            if value.type.rank == 0 or value.type.shape[0] % shards or value.type.shape[0] < shards:
                self.problem = (f"input {value.name!r} of type {value.type} has no axis 0 divisible into "
                                f"{shards} shards")
                return
            self.batched.add(value.id)
        for node in graph.nodes:
            self.problem = self._visit(node)
            if self.problem:
                return
        loss = graph.outputs[0] if len(graph.outputs) == 1 else None
        if loss is None or loss.id not in self.reduced:
            self.problem = ("the loss is not a mean or sum over the batch (one scalar output reducing every "
                            "example, such as cross_entropy or .mean())")

    def _visit(self, node: Node) -> Optional[str]:
        ids = [value.id for value in node.inputs]
        if any(value_id in self.reduced for value_id in ids):
            return self._combine_reduced(node)
        if not any(value_id in self.batched for value_id in ids):
            return None  # a function of parameters and constants: the same on every shard
        rule = _RULES.get(node.op) or _KIND_RULES.get(get_op(node.op).kind)
        verdict = rule(node, self.batched) if rule else f"{node.op} has no data-parallel rule"
        if verdict in (MEAN, SUM):
            self.reduced[node.output.id] = verdict
        elif verdict is True:
            if node.output.type.rank == 0 or node.output.type.shape[0] % self.shards:
                return f"{node.describe()}: its axis 0 ({node.output.type}) does not split into {self.shards} shards"
            self.batched.add(node.output.id)
        else:
            return f"{node.describe()} mixes examples of the batch: {verdict or 'not provably per example'}"
        return None

    def _combine_reduced(self, node: Node) -> Optional[str]:
        """A batch-reduced scalar may be negated or scaled by a shard-independent value, and a mean shifted by
        one: each shard's loss changes alike, so the combination still holds."""
        kinds = [self.reduced.get(value.id) for value in node.inputs]
        kind = next(k for k in kinds if k)
        alone = (kinds.count(kind) == 1 and node.output.type.rank == 0
                 and not any(value.id in self.batched for value in node.inputs))
        scaling = node.op in ("neg", "mul") or (node.op == "div" and kinds[0] is not None)
        shifting = node.op in ("add", "sub") and kind == MEAN
        if alone and (scaling or shifting):
            self.reduced[node.output.id] = kind
            return None
        return f"{node.describe()} uses the batch's {kind} in a way that does not split across shards"


def _batched_axis0_extent(node: Node, batched: set[int]) -> Optional[int]:
    extents = {value.type.shape[0] for value in node.inputs if value.id in batched}
    return extents.pop() if len(extents) == 1 else None


def _elementwise(node: Node, batched: set[int]):
    """Batch-carrying inputs must line up with the output's axis 0; the others must broadcast along it."""
    out = node.output.type
    for value in node.inputs:
        if value.id in batched:
            if value.type.rank != out.rank or value.type.shape[0] != out.shape[0]:
                return f"input {value.label} {value.type} is broadcast against {out}"
        elif value.type.rank == out.rank and value.type.shape[0] != 1:
            return f"input {value.label} {value.type} spans axis 0 without carrying the batch"
    return True


def _matmul(node: Node, batched: set[int]):
    a, b = node.inputs
    out = node.output.type
    if b.id in batched and b.type.rank == 2:
        return "the batch runs along the contracted axis"
    for operand in (a, b):
        if operand.id in batched and operand.type.rank != out.rank:
            return f"{operand.label} {operand.type} is broadcast against {out}"
        if operand.id not in batched and operand.type.rank == out.rank and out.rank > 2 and operand.type.shape[0] != 1:
            return f"{operand.label} {operand.type} spans axis 0 without carrying the batch"
    if b.id in batched and a.id not in batched and out.rank == 2:
        return "the batch runs along the contracted axis"
    return True


def _reduction(node: Node, batched: set[int]):
    axes = node.attrs["axes"]
    if 0 not in axes:
        return True
    if len(axes) == node.inputs[0].type.rank and node.op in ("sum", "mean"):
        return SUM if node.op == "sum" else MEAN
    return "it reduces over the batch axis"


def _along_axis(name: str):
    def rule(node: Node, batched: set[int]):
        return True if node.attrs[name] != 0 else "it works along the batch axis"
    return rule


def _transpose(node: Node, batched: set[int]):
    return True if node.attrs["perm"][0] == 0 else "it moves the batch axis"


def _whole_axis0_slice(node: Node, batched: set[int]):
    start, stop, step = node.attrs["slices"][0]
    extent = node.inputs[0].type.shape[0]
    return True if (start, stop, step) == (0, extent, 1) else "it slices the batch axis"


def _reshape(node: Node, batched: set[int]):
    # Any reshape keeps flat order, and the shards are contiguous flat runs; the output keeps them whole rows as
    # long as its axis 0 divides by the shard count (checked by the caller).
    return True


def _first_input_only(node: Node, batched: set[int]):
    """Row-wise ops (layer norm over the last axis, a lookup): only the first input may carry the batch."""
    first = node.inputs[0]
    if first.id not in batched or any(value.id in batched for value in node.inputs[1:]):
        return "only its first input may carry the batch"
    return True if node.op != "layer_norm" or first.type.rank >= 2 else "it normalises along the batch axis"


def _embedding(node: Node, batched: set[int]):
    weight, indices = node.inputs
    return True if indices.id in batched and weight.id not in batched else "the table carries the batch"


def _cross_entropy(node: Node, batched: set[int]):
    logits, targets = node.inputs
    if logits.id in batched and targets.id in batched and logits.type.rank >= 2:
        return MEAN  # the mean over every position
    return "logits and targets must both carry the batch"


def _concat(node: Node, batched: set[int]):
    if node.attrs["axis"] == 0:
        return "it joins along the batch axis"
    if not all(value.id in batched for value in node.inputs) or _batched_axis0_extent(node, batched) is None:
        return "it joins values that do not all carry the batch"
    return True


_KIND_RULES = {OpKind.ELEMENTWISE: _elementwise, OpKind.BROADCAST: _elementwise}
_RULES = {
    "matmul": _matmul, "sum": _reduction, "mean": _reduction, "max": _reduction,
    "softmax": _along_axis("axis"), "log_softmax": _along_axis("axis"), "transpose": _transpose,
    "slice": _whole_axis0_slice, "reshape": _reshape, "layer_norm": _first_input_only, "one_hot": _first_input_only,
    "embedding": _embedding, "cross_entropy": _cross_entropy, "concat": _concat,
}


def split_loss(graph: Graph, shards: int) -> tuple[Optional[str], Optional[str]]:
    """(MEAN or SUM, None) when the forward-and-loss `graph` splits exactly into `shards` shards along axis 0 of
    every input (the loss then combines by that), else (None, the reason it does not)."""
    proof = _Proof(graph, shards)
    if proof.problem:
        return None, proof.problem
    return proof.reduced[graph.outputs[0].id], None


def batched_values(graph: Graph, shards: int) -> set[int]:
    """Ids of the values of `graph` that carry the batch on axis 0 (assuming split_loss found no problem)."""
    return _Proof(graph, shards).batched


def shard_mismatch(whole: Graph, shard: Graph, shards: int) -> Optional[str]:
    """None when `shard` (traced at 1/shards of the batch) is `whole`'s program at that batch size, else how
    they differ."""
    if len(whole.nodes) != len(shard.nodes) or len(whole.inputs) != len(shard.inputs):
        return (f"the graph at the shard's batch has {len(shard.nodes)} nodes, the whole batch's "
                f"{len(whole.nodes)}: the model's code depends on the batch size")
    batched = batched_values(whole, shards)
    pairs = list(zip(whole.inputs, shard.inputs)) + list(zip(whole.params, shard.params))
    pairs += [(a.output, b.output) for a, b in zip(whole.nodes, shard.nodes)]
    for big, small in pairs:
        expected = big.type
        if big.id in batched:
            expected = type(big.type)((big.type.shape[0] // shards,) + big.type.shape[1:], big.type.dtype)
        if small.type != expected or big.name != small.name:
            return f"{big.label} is {small.type} at the shard's batch, expected {expected}"
    for big, small in zip(whole.nodes, shard.nodes):
        if big.op != small.op:
            return f"{big.describe()} is {small.op} at the shard's batch"
        shaped = _SHAPE_ATTRS.get(big.op)
        for name, value in big.attrs.items():
            other = small.attrs[name]
            if name == shaped:
                continue
            same = np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other
            if not same:
                return f"{big.describe()}: attribute {name} is {other!r} at the shard's batch, {value!r} whole"
    return None
