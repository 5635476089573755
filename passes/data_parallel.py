"""Data-parallel splitting, proved from the graph: may a training step's batch be cut into equal shards that each
run the same graph, with the whole batch's loss and gradients the sum of the shards'?

The proof is an abstract interpretation of the forward graph. Every value gets one of three classes:

- PER_EXAMPLE: axis 0 carries the batch, and a shard's rows depend on that shard's examples alone;
- PARTIAL: a batch reduction (a sum or mean over axis 0, cross-entropy) or a linear function of such, for which
  whole value = sum over shards of the shard's value, once the shard graph is scaled (below);
- INDEPENDENT: no dependence on the batch (parameters, constants, functions of them): the same on every shard.

The rules are proved, not pattern-matched. PER_EXAMPLE is closed under ops that keep examples apart (elementwise
with broadcasting that does not span axis 0, matmuls that do not contract over it, reductions and row-wise ops along
other axes, reshapes keeping axis 0 divisible). A sum over axis 0 is PARTIAL as it stands: sum(batch) = sum over
shards of sum(shard). A mean over axis 0 is PARTIAL once the shard's mean is scaled by 1/shards: mean(batch) = sum
over shards of mean(shard) / shards (equal shards). PARTIAL is closed under linear maps with INDEPENDENT
coefficients: negation, addition of two PARTIALs, multiplication by or division by an INDEPENDENT value, sums,
means, reshapes and transposes (which never touch a batch axis: a PARTIAL has none). An INDEPENDENT term added to
a PARTIAL is scaled by 1/shards in the shard graph, so that the shards' copies add up to it once. Nothing else
may read a PARTIAL: the product or quotient of two batch reductions, a function (log, exp, ...) of one, or a
PER_EXAMPLE value combined with one does not split into a sum over shards, and is refused naming the node.

If the loss (the graph's one output) is PARTIAL, then loss(batch) = sum over shards of the scaled shard loss, and
by linearity of differentiation so is every gradient: each shard differentiates its own scaled loss with seed 1,
and the gradients are summed. `scale_shard_graph` makes the scaled shard graph; `shard_mismatch` checks that the
graph traced at the shard's batch size is the same program (same ops and attributes, PER_EXAMPLE types with axis 0
divided by the shard count, every other type unchanged), so running it on each shard computes exactly those rows.

Anything without a rule refuses, with the reason and the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from graphgpt.ir import Graph, GraphBuilder, Node, OpKind, Provenance, get_op
from graphgpt.ir.dims import Dim, Size, exact_quotient, has_symbols, is_one, same_shape, same_size, substitute
from graphgpt.ir.ops import attrs

from .rewrite import copied_results, copy_leaves

PER_EXAMPLE, PARTIAL, INDEPENDENT = "per-example", "partial", "independent"


@dataclass(frozen=True)
class SplitProof:
    """What the proof found for a graph split into `shards`: the class of every value (by id), and where the shard
    graph must be scaled by 1/shards: the outputs of batch means (`scaled_nodes`) and the INDEPENDENT operands of
    additions to a PARTIAL (`scaled_operands`, (node output id, operand position) pairs)."""

    shards: int
    classes: dict[int, str]
    scaled_nodes: frozenset[int]
    scaled_operands: frozenset[tuple[int, int]]
    means: int
    sums: int

    def describe(self) -> str:
        terms = [f"{count} batch {kind}{'s' if count > 1 else ''}" for kind, count in (("mean", self.means),
                                                                                       ("sum", self.sums)) if count]
        return f"loss from {' and '.join(terms)}, summed over shards"


class _Refusal(Exception):
    """Raised inside the proof: splitting is not exact, for the reason given."""


# ---- rules for PER_EXAMPLE values: each returns PER_EXAMPLE, PARTIAL (a batch reduction), or raises ---------------

def _refuse(node: Node, why: str):
    raise _Refusal(f"{node.describe()} mixes examples of the batch: {why}")


def _elementwise(node: Node, classes: dict[int, str]) -> str:
    """PER_EXAMPLE inputs must line up with the output's axis 0; the others must broadcast along it."""
    out = node.output.type
    for value in node.inputs:
        if classes[value.id] == PER_EXAMPLE:
            if value.type.rank != out.rank or not same_size(value.type.shape[0], out.shape[0]):
                _refuse(node, f"input {value.label} {value.type} is broadcast against {out}")
        elif value.type.rank == out.rank and not is_one(value.type.shape[0]):
            _refuse(node, f"input {value.label} {value.type} spans axis 0 without carrying the batch")
    return PER_EXAMPLE


def _matmul(node: Node, classes: dict[int, str]) -> str:
    a, b = node.inputs
    out = node.output.type
    if classes[b.id] == PER_EXAMPLE and b.type.rank == 2:
        _refuse(node, "the batch runs along the contracted axis")
    for operand in (a, b):
        if classes[operand.id] == PER_EXAMPLE and operand.type.rank != out.rank:
            _refuse(node, f"{operand.label} {operand.type} is broadcast against {out}")
        if (classes[operand.id] != PER_EXAMPLE and operand.type.rank == out.rank and out.rank > 2
                and not is_one(operand.type.shape[0])):
            _refuse(node, f"{operand.label} {operand.type} spans axis 0 without carrying the batch")
    return PER_EXAMPLE


def _matmul_permuted(node: Node, classes: dict[int, str]) -> str:
    if node.attrs["perm"][0] != 0:
        _refuse(node, "it moves the batch axis")
    return _matmul(node, classes)


def _reduction(node: Node, classes: dict[int, str]) -> str:
    if 0 not in node.attrs["axes"]:
        return PER_EXAMPLE
    if node.op in ("sum", "mean"):
        return PARTIAL  # over the batch axis: a sum (or, scaled, a mean) of the shards' reductions
    _refuse(node, "it reduces over the batch axis with a reduction that is not a sum or a mean")


def _along_axis(name: str) -> Callable[[Node, dict[int, str]], str]:
    def rule(node: Node, classes: dict[int, str]) -> str:
        if node.attrs[name] == 0:
            _refuse(node, "it works along the batch axis")
        return PER_EXAMPLE
    return rule


def _transpose(node: Node, classes: dict[int, str]) -> str:
    if node.attrs["perm"][0] != 0:
        _refuse(node, "it moves the batch axis")
    return PER_EXAMPLE


def _whole_axis0_slice(node: Node, classes: dict[int, str]) -> str:
    if not same_shape(node.attrs["slices"][0], (0, node.inputs[0].type.shape[0], 1)):
        _refuse(node, "it slices the batch axis")
    return PER_EXAMPLE


def _reshape(node: Node, classes: dict[int, str]) -> str:
    # Any reshape keeps flat order, and the shards are contiguous flat runs: the output keeps them whole rows as
    # long as its axis 0 divides by the shard count (checked by the caller).
    return PER_EXAMPLE


def _first_input_only(node: Node, classes: dict[int, str]) -> str:
    """Row-wise ops (layer norm over the last axis, one_hot): only the first input may carry the batch."""
    first = node.inputs[0]
    if classes[first.id] != PER_EXAMPLE or any(classes[value.id] == PER_EXAMPLE for value in node.inputs[1:]):
        _refuse(node, "only its first input may carry the batch")
    if node.op == "layer_norm" and first.type.rank < 2:
        _refuse(node, "it normalises along the batch axis")
    return PER_EXAMPLE


def _embedding(node: Node, classes: dict[int, str]) -> str:
    weight, indices = node.inputs
    if classes[indices.id] != PER_EXAMPLE or classes[weight.id] == PER_EXAMPLE:
        _refuse(node, "the table carries the batch")
    return PER_EXAMPLE


def _cross_entropy(node: Node, classes: dict[int, str]) -> str:
    logits, targets = node.inputs
    if classes[logits.id] != PER_EXAMPLE or classes[targets.id] != PER_EXAMPLE or logits.type.rank < 2:
        _refuse(node, "logits and targets must both carry the batch")
    return PARTIAL  # the mean over every position: scaled like a mean


def _concat(node: Node, classes: dict[int, str]) -> str:
    if node.attrs["axis"] == 0:
        _refuse(node, "it joins along the batch axis")
    if any(classes[value.id] != PER_EXAMPLE for value in node.inputs):
        _refuse(node, "it joins values that do not all carry the batch")
    if len({value.type.shape[0] for value in node.inputs}) != 1:
        _refuse(node, "its inputs' axes 0 differ")
    return PER_EXAMPLE


_KIND_RULES = {OpKind.ELEMENTWISE: _elementwise, OpKind.BROADCAST: _elementwise}
_RULES = {
    "matmul": _matmul, "matmul_permuted": _matmul_permuted, "sum": _reduction, "mean": _reduction, "max": _reduction,
    "softmax": _along_axis("axis"), "log_softmax": _along_axis("axis"), "transpose": _transpose,
    "slice": _whole_axis0_slice, "reshape": _reshape, "layer_norm": _first_input_only, "one_hot": _first_input_only,
    "embedding": _embedding, "cross_entropy": _cross_entropy, "concat": _concat,
}
# Batch reductions that are means: their shard values are scaled by 1/shards.
_MEAN_REDUCTIONS = ("mean", "cross_entropy")

# ---- rules for PARTIAL values: the linear maps, with INDEPENDENT coefficients ----------------------------------

# Ops linear in their one input, whatever their attributes: a PARTIAL has no batch axis for them to touch.
_LINEAR_UNARY = ("neg", "sum", "mean", "reshape", "transpose", "broadcast_to")


def _partial_rule(node: Node, classes: dict[int, str], scaled_operands: set) -> str:
    """The class of a node reading at least one PARTIAL and no PER_EXAMPLE value; refuses what is not linear."""
    partial = [classes[value.id] == PARTIAL for value in node.inputs]
    if node.op in _LINEAR_UNARY:
        return PARTIAL
    if node.op in ("add", "sub"):
        for position, is_partial in enumerate(partial):
            if not is_partial:  # an INDEPENDENT term: each shard adds its 1/shards share of it
                scaled_operands.add((node.output.id, position))
        return PARTIAL
    if node.op == "mul" and partial.count(True) == 1:
        return PARTIAL
    if node.op == "div" and partial == [True, False]:
        return PARTIAL
    if node.op in ("mul", "div"):
        what = "multiplies two batch reductions" if node.op == "mul" else "divides by a batch reduction"
        raise _Refusal(f"{node.describe()} {what}: the whole batch's value is not the sum of the shards' (only "
                       f"sums, and products with batch-independent values, split exactly)")
    raise _Refusal(f"{node.describe()} applies {node.op} to a batch reduction, which is not linear: the whole "
                   f"batch's value is not the sum of the shards'")


def shard_extent(extent: Size, shards: int) -> Size:
    """A per-example axis 0 of the whole batch's extent as a shard has it: 1/shards of it. A symbolic batch B is
    the shard's own in the shard's graph (the whole batch being shards * B), so B*T stays B*T there."""
    if not isinstance(extent, Dim):
        return extent // shards
    return exact_quotient(substitute(extent, {name: shards * Dim.symbol(name) for name in extent.symbols}), shards)


def _splits(extent: Size, shards: int) -> bool:
    """Whether an axis 0 of this extent cuts into `shards` equal non-empty parts (a symbolic one: at every batch
    that does, which the program checks before running split)."""
    if isinstance(extent, Dim):
        return shard_extent(extent, shards) is not None
    return extent % shards == 0 and extent >= shards


def _prove(graph: Graph, shards: int) -> SplitProof:
    classes: dict[int, str] = {}
    for value in graph.inputs:
        if value.type.rank == 0 or not _splits(value.type.shape[0], shards):
            raise _Refusal(f"input {value.name!r} of type {value.type} has no axis 0 divisible into {shards} shards")
        classes[value.id] = PER_EXAMPLE
    extents = {value.type.shape[0] for value in graph.inputs}
    if len(extents) > 1:
        raise _Refusal(f"the inputs' axes 0 differ ({', '.join(f'{v.name}: {v.type}' for v in graph.inputs)}): "
                       f"every input is cut along axis 0, so each must have the batch there")
    for value in graph.params:
        classes[value.id] = INDEPENDENT
    scaled_nodes: set[int] = set()
    scaled_operands: set[tuple[int, int]] = set()
    means = sums = 0
    for node in graph.nodes:
        kinds = {classes[value.id] for value in node.inputs}
        if PER_EXAMPLE in kinds and PARTIAL in kinds:
            raise _Refusal(f"{node.describe()} combines a per-example value with a reduction over the batch, "
                           f"which mixes examples")
        if PARTIAL in kinds:
            verdict = _partial_rule(node, classes, scaled_operands)
        elif PER_EXAMPLE in kinds:
            rule = _RULES.get(node.op) or _KIND_RULES.get(get_op(node.op).kind)
            if rule is None:
                raise _Refusal(f"{node.describe()}: {node.op} has no data-parallel rule")
            verdict = rule(node, classes)
            if verdict == PARTIAL:
                mean = node.op in _MEAN_REDUCTIONS
                means, sums = means + mean, sums + (not mean)
                if mean:
                    scaled_nodes.add(node.output.id)
            elif node.output.type.rank == 0 or not _splits(node.output.type.shape[0], shards):
                raise _Refusal(f"{node.describe()}: its axis 0 ({node.output.type}) does not split into "
                               f"{shards} shards")
        else:
            verdict = INDEPENDENT  # a function of parameters and constants: the same on every shard
        classes[node.output.id] = verdict
    if len(graph.outputs) != 1 or graph.updates:
        raise _Refusal("a split step needs a graph with one output, the loss, and no updates")
    loss = graph.outputs[0]
    if classes[loss.id] != PARTIAL or loss.type.rank != 0:
        where = loss.producer.describe() if loss.producer is not None else f"{loss.kind} {loss.label}"
        raise _Refusal(f"the loss, {where} of type {loss.type}, is not a mean or sum over the batch, or a linear "
                       f"combination of such (one scalar output reducing every example, such as cross_entropy "
                       f"or .mean()); it is {classes[loss.id]}")
    return SplitProof(shards, classes, frozenset(scaled_nodes), frozenset(scaled_operands), means, sums)


def prove_split(graph: Graph, shards: int) -> tuple[Optional[SplitProof], Optional[str]]:
    """(proof, None) when the forward-and-loss `graph` splits exactly into `shards` shards along axis 0 of every
    input, else (None, the reason it does not, naming the node)."""
    try:
        return _prove(graph, shards), None
    except _Refusal as refusal:
        return None, str(refusal)


def scale_shard_graph(shard: Graph, whole: Graph, proof: SplitProof) -> Graph:
    """The shard's forward graph with batch means and INDEPENDENT terms added to batch reductions scaled by
    1/shards, so that every PARTIAL value of the whole batch is the sum over shards of the shard's value.
    `shard` must be `whole`'s program at the shard's batch size (shard_mismatch(whole, shard) is None): node i
    of one stands for node i of the other."""
    builder = GraphBuilder(header=f"scale_shard_graph (1/{proof.shards} per batch mean)")
    new_values = copy_leaves(shard, builder)
    provenance = Provenance(module_path="data_parallel", role="combine")

    def scaled(value):
        factor = builder.add_constant(np.array(1.0 / proof.shards, value.type.numpy_dtype), provenance)
        return builder.add_node("mul", [value, factor], {}, provenance)

    for big, small in zip(whole.nodes, shard.nodes):
        inputs = [new_values[value.id] for value in small.inputs]
        for position, value in enumerate(inputs):
            if (big.output.id, position) in proof.scaled_operands:
                inputs[position] = scaled(value)
        output = builder.add_node(small.op, inputs, small.attrs, small.provenance, value_id=small.output.id)
        new_values[small.output.id] = scaled(output) if big.output.id in proof.scaled_nodes else output
    return builder.finish(*copied_results(shard, new_values))


def _shard_attribute(node: Node, name: str, value, proof: SplitProof):
    """The attribute `name` of `node` (of the whole batch's graph) as the shard's graph must have it: a shape
    carrying the batch on axis 0 has it divided by the shard count; everything else is the same."""
    op = get_op(node.op)
    if name not in op.shape_attrs or proof.classes[node.output.id] != PER_EXAMPLE:
        return value
    if op.attrs[name] is attrs.SLICES:  # the proof admits only whole-axis slices of axis 0
        (start, stop, step), rest = value[0], tuple(value[1:])
        return ((start, shard_extent(stop, proof.shards), step),) + rest
    return (shard_extent(value[0], proof.shards),) + tuple(value[1:])


def shard_mismatch(whole: Graph, shard: Graph, proof: SplitProof) -> Optional[str]:
    """None when `shard` (traced at 1/shards of the batch) is `whole`'s program at that batch size, else how
    they differ."""
    if len(whole.nodes) != len(shard.nodes) or len(whole.inputs) != len(shard.inputs):
        return (f"the graph at the shard's batch has {len(shard.nodes)} nodes, the whole batch's "
                f"{len(whole.nodes)}: the model's code depends on the batch size")
    pairs = list(zip(whole.inputs, shard.inputs)) + list(zip(whole.params, shard.params))
    pairs += [(a.output, b.output) for a, b in zip(whole.nodes, shard.nodes)]
    for big, small in pairs:
        expected = big.type
        if proof.classes[big.id] == PER_EXAMPLE:
            expected = type(big.type)((shard_extent(big.type.shape[0], proof.shards),) + big.type.shape[1:],
                                      big.type.dtype)
        if not small.type.same_as(expected) or big.name != small.name:
            return f"{big.label} is {small.type} at the shard's batch, expected {expected}"
    for big, small in zip(whole.nodes, shard.nodes):
        if big.op != small.op:
            return f"{big.describe()} is {small.op} at the shard's batch"
        if len(big.inputs) != len(small.inputs) or any(
                a.id != b.id for a, b in zip(big.inputs, small.inputs)):
            return f"{big.describe()} reads other values at the shard's batch"
        for name, value in big.attrs.items():
            expected = _shard_attribute(big, name, value, proof)
            other = small.attrs[name]
            if isinstance(expected, np.ndarray):
                same = np.array_equal(expected, other)
            elif has_symbols(expected) or has_symbols(other):  # as written (repr is canonical): B is not 4
                same = repr(expected) == repr(other)
            else:
                same = expected == other
            if not same:
                return (f"{big.describe()}: attribute {name} is {other!r} at the shard's batch, expected "
                        f"{expected!r} ({value!r} for the whole batch)")
    return None
