"""Gradient buckets of a data-parallel step: each shard returns its gradients joined into vectors (a bucket: a run
of consecutive gradients as passes/joined_runs.py forms them), the shards' buckets are summed with one addition each, and
the combine graph cuts each sum back into the parameters' gradients (views), as PyTorch's DistributedDataParallel
buckets gradients for its all-reduce. The `graphgpt train` GPT's 37 gradients are one bucket: the sum over shards,
serial after them, is one addition of 117K elements instead of 37 short ones, and the optimizer's update, which
joins the gradients of the same run of parameters again (the same rule: passes/joined_runs.py), reads the summed
vector itself (simplify's join_adjacent_slices folds the join of its consecutive slices). Joining is a copy inside
each shard, run in parallel, of gradients the combine graph would otherwise join serially.

    shard, buckets = join_gradients(shard_backward.graph, wrt)    # outputs: the loss, then one vector per bucket
    gradients = buckets.cut(builder, totals)                      # in the combine graph: a value per name
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from graphgpt.ir import Graph, GraphBuilder, Provenance, TensorType, Value

from .joined_runs import joined_runs
from .rewrite import copied_results, copy_into

PROVENANCE = Provenance(module_path="data_parallel", role="combine")


@dataclass(frozen=True)
class GradientBuckets:
    """Which gradients (positions in `names`) each bucket joins, in order, and their types."""

    names: tuple[str, ...]
    types: tuple[TensorType, ...]
    buckets: tuple[tuple[int, ...], ...]

    def bucket_name(self, bucket: Sequence[int]) -> str:
        """'grad.lm_head.weight' for a gradient alone, 'grad.<token_embedding.weight to lm_head.weight>'."""
        first, last = self.names[bucket[0]], self.names[bucket[-1]]
        return f"grad.{first}" if len(bucket) == 1 else f"grad.<{first} to {last}>"

    def bucket_type(self, bucket: Sequence[int]) -> TensorType:
        if len(bucket) == 1:
            return self.types[bucket[0]]
        return TensorType((sum(self.types[position].size for position in bucket),), self.types[bucket[0]].dtype)

    def cut(self, builder: GraphBuilder, totals: Sequence[Value]) -> list[Value]:
        """The gradient of every name, in order, from one value per bucket (`totals`): a bucket of one is its
        gradient; a joined one is cut into slices of consecutive elements, each reshaped to its parameter's shape."""
        gradients: list[Value] = [None] * len(self.names)  # type: ignore[list-item]
        for bucket, total in zip(self.buckets, totals):
            if len(bucket) == 1:
                gradients[bucket[0]] = total
                continue
            start = 0
            for position in bucket:
                kind = self.types[position]
                piece = builder.add_node("slice", [total], {"slices": ((start, start + kind.size, 1),)}, PROVENANCE)
                gradients[position] = builder.add_node("reshape", [piece], {"shape": kind.shape}, PROVENANCE)
                start += kind.size
        return gradients


def gradient_buckets(names: Sequence[str], types: Sequence[TensorType]) -> GradientBuckets:
    """The gradients' runs as the optimizer joins its parameters' (passes/joined_runs.py): consecutive gradients
    of one dtype and known sizes, at most JOINED_ELEMENTS in a bucket. A gradient that large stays alone, returned
    as it is: joining it would only add a copy (its update runs over it alone too)."""
    return GradientBuckets(tuple(names), tuple(types), tuple(tuple(run) for run in joined_runs(types)))


def join_gradients(graph: Graph, names: Sequence[str]) -> tuple[Graph, GradientBuckets]:
    """`graph`, whose outputs are the loss then the gradient of each of `names`, returning the loss then one
    vector per bucket instead: the bucket's gradients flattened and joined, in order."""
    gradients = graph.outputs[1:]
    buckets = gradient_buckets(names, [value.type for value in gradients])
    if all(len(bucket) == 1 for bucket in buckets.buckets):
        return graph, buckets
    builder = GraphBuilder(header="join_gradients (data-parallel buckets)")
    new_values = copy_into(graph, builder)
    outputs, updates = copied_results(graph, new_values)
    joined = [outputs[0]]
    for bucket in buckets.buckets:
        members = [outputs[1 + position] for position in bucket]
        if len(members) == 1:
            joined.append(members[0])
            continue
        flat = [builder.add_node("reshape", [value], {"shape": (value.type.size,)}, PROVENANCE) for value in members]
        joined.append(builder.add_node("concat", flat, {"axis": 0}, PROVENANCE))
    return builder.finish(joined, updates), buckets
