"""The facts an op declares about itself (ir/ops/registry.py: `fusible`, `view`, shape-carrying attributes), checked
against what the op actually does, for every registered op; and the per-op tables a pass still keeps, checked to
cover every registered op or to exempt it on purpose, so a new op cannot slip past a pass unnoticed.

Passes read these facts instead of keeping their own op lists: the fusion pass and the fused op's type rule ask
`fusible`, the memory plan and `simplify` ask `view`, the data-parallel split asks `shape_attrs`. A wrong fact is
a wrong program (a fused op that cannot compute in place, a "view" that copies), so each is tested here.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphgpt.ir import OPS, OpKind, ShapeError, TensorType
from graphgpt.ir.ops import ViewLayout
from graphgpt.ir.ops.attrs import IntTupleAttr, ShapeAttr, SlicesAttr
from graphgpt.passes import data_parallel
from test_ops import CASES, prepared  # the op table's sample inputs, one or more rows per registered op

FUSIBLE = sorted(name for name, op in OPS.items() if op.fusible)
VIEWS = sorted(name for name, op in OPS.items() if op.view)


def test_the_facts_are_declared_where_expected():
    """A readable summary: which ops claim what (the tests below check each claim against the op's behaviour)."""
    assert FUSIBLE == sorted(["neg", "exp", "log", "tanh", "sqrt", "add", "sub", "mul", "div", "pow", "maximum"])
    assert {name: OPS[name].view for name in VIEWS} == {
        "reshape": ViewLayout.RESHAPE, "transpose": ViewLayout.STRIDED, "broadcast_to": ViewLayout.STRIDED,
        "slice": ViewLayout.STRIDED}


# ---- fusible: an instruction of a fused elementwise program ----------------------------------------------------


def _qualifies_for_fusion(op) -> bool:
    """What the fused op's block loop needs of an instruction: one ufunc that may write over an input, with no
    attributes (a program's instructions carry none), elementwise after broadcasting, float in -> float out."""
    if not (op.kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST) and isinstance(op.compute, np.ufunc)
            and op.inplace and not op.attrs):
        return False
    try:
        return all(op.infer_type([TensorType((2, 3), dtype)] * op.arity, {}).is_float
                   for dtype in ("float32", "float64"))
    except ShapeError:  # refuses float inputs
        return False


@pytest.mark.parametrize("name", sorted(OPS))
def test_fusible_exactly_where_the_op_qualifies(name):
    """Declared fusible if and only if it qualifies: a new one-ufunc float op left undeclared fails here too."""
    op = OPS[name]
    assert op.fusible == _qualifies_for_fusion(op), (
        f"{name}: declared fusible={op.fusible}, but it {'qualifies' if not op.fusible else 'does not qualify'} "
        f"(kind {op.kind.value}, compute {op.compute!r}, inplace={op.inplace}, attrs {sorted(op.attrs)})")


@pytest.mark.parametrize("name", FUSIBLE)
def test_fusible_ops_compute_into_an_input(name):
    """Writing the result over any one input (as fused programs and in-place buffers do) gives the same values."""
    op = OPS[name]
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0.5, 2.0, size=(3, 4)).astype(np.float32) for _ in range(op.arity)]  # log, sqrt, pow
    expected = op.evaluate(inputs, {})
    for position in range(op.arity):
        arguments = [x.copy() for x in inputs]
        op.compute_into(arguments[position], *arguments)
        np.testing.assert_array_equal(arguments[position], expected, err_msg=f"{name}: out is input {position}")


# ---- view: the result shares its first input's memory ------------------------------------------------------------

ROWS_WITH_INPUTS = [row for row in CASES if row.inputs]


@pytest.mark.parametrize("row", ROWS_WITH_INPUTS, ids=[row.id for row in ROWS_WITH_INPUTS])
def test_declared_views_share_memory_and_copies_do_not(row):
    """STRIDED: always a view of the first input. RESHAPE: a view of a contiguous input (NumPy copies only for
    some strided ones). COPY: shares memory with no input (else the executor's buffers would alias)."""
    op, arrays, attrs = prepared(row)
    result = op.evaluate(arrays, attrs)
    if result.size == 0:  # an empty array shares no bytes with anything
        return
    if op.view:
        assert np.shares_memory(result, arrays[0]), f"{row.id}: declared a {op.view.value} view, but copies"
    else:
        shared = [position for position, x in enumerate(arrays) if np.shares_memory(result, x)]
        assert not shared, f"{row.id}: declared a copy, but its result shares memory with inputs {shared}"


def test_reshape_layout_copies_where_numpy_must():
    """A RESHAPE-layout op on a non-contiguous input still gives the C-order result (a copy): the memory plan
    gives it a buffer there and a view elsewhere (passes/memory_plan.py `_view_layout`)."""
    x = np.arange(24, dtype=np.float32).reshape(4, 6).T  # (6, 4), not C-contiguous
    for name in VIEWS:
        op = OPS[name]
        if op.view is ViewLayout.RESHAPE:
            result = op.evaluate([x], {"shape": (24,)})
            np.testing.assert_array_equal(result, np.ascontiguousarray(x).reshape(24))
            assert not np.shares_memory(result, x)


# ---- shape-carrying attributes --------------------------------------------------------------------------------

# Every (op, attribute) restating a shape or per-axis extents of the op's values. Why these and no others:
#   reshape.shape, broadcast_to.shape, unslice.shape   the output's shape;
#   slice.slices, unslice.slices                       per-axis bounds: their extents are a value's shape;
#   dropout_mask.shape                                 the output's shape (the mask of an activation).
# Not shape-carrying, on purpose: transpose.perm and reductions' axes (axis numbers, the same at any size);
# scatter_add.num_rows and one_hot.num_classes (sizes of a new axis the op creates, a table's rows or a class
# count: they come from the model, not from the shapes of the op's inputs, so a smaller batch keeps them).
SHAPE_CARRYING = {("reshape", "shape"), ("broadcast_to", "shape"), ("unslice", "shape"),
                  ("slice", "slices"), ("unslice", "slices"), ("reciprocal_size", "size"), ("dropout_mask", "shape")}


def test_shape_carrying_attributes_are_the_listed_ones():
    declared = {(name, attribute) for name, op in OPS.items() for attribute in op.shape_attrs}
    assert declared == SHAPE_CARRYING


@pytest.mark.parametrize("row", ROWS_WITH_INPUTS, ids=[row.id for row in ROWS_WITH_INPUTS])
def test_shape_attributes_are_shapes_of_the_ops_values(row):
    """On every sample: a SHAPE attribute is the output's shape, a SLICES attribute's extents are the shape of the
    sliced value or of the slice, and no other tuple of integers equals a shape of the op's values (it would be a
    shape declared with the wrong kind)."""
    op, arrays, attrs = prepared(row)
    output_shape = op.infer_type([TensorType.of(x) for x in arrays], attrs).shape
    shapes = {x.shape for x in arrays} | {output_shape}
    for name, kind in op.attrs.items():
        value = attrs[name]
        if isinstance(kind, ShapeAttr):
            assert value == output_shape, f"{row.id}: {name} {value} is not the output's shape {output_shape}"
        elif isinstance(kind, SlicesAttr):
            extents = tuple(len(range(*triple)) for triple in value)
            assert extents in shapes, f"{row.id}: {name}' extents {extents} are no shape of its values {shapes}"
        elif isinstance(kind, IntTupleAttr) and value and not any(0 in shape for shape in shapes):
            # (Samples with an empty axis are left out: axes=(0,) of an f32[0] equals its shape by coincidence.)
            assert value not in shapes, f"{row.id}: {name} {value} equals a shape of its values: declare it SHAPE"
        assert kind.carries_shape == (name in op.shape_attrs)


# ---- per-op tables kept by passes ------------------------------------------------------------------------------

# Ops the data-parallel proof refuses on purpose when they read a batch-carrying value, with why. The proof walks
# the forward graph and the loss only; these never appear there (or take no inputs at all).
DATA_PARALLEL_REFUSED = {
    "constant": "takes no inputs, so it never reads the batch",
    "reciprocal_size": "a symbolic mean's scale, made by autodiff only (and takes no inputs)",
    "unslice": "the gradient of slice: made by autodiff, never traced in a forward graph",
    "scatter_add": "the gradient of embedding: made by autodiff, never traced in a forward graph",
    "layer_norm_grad": "a backward kernel, made by autodiff only",
    "layer_norm_gamma_grad": "a backward kernel, made by autodiff only",
    "softmax_grad": "a backward kernel, made by autodiff only",
    "cross_entropy_grad": "a backward kernel, made by autodiff only",
    "attention": "made by fuse_attention after the proof, which walks the forward graph as traced (composite)",
    "attention_grad": "a backward kernel, made by autodiff only",
    "cache_write": "writes generation state (a KV cache) by a graph update, which a split step refuses; "
                   "generation graphs are forward graphs, never split",
    "dropout_mask": "draws the whole batch's mask from one key: a shard's draw at its own shape is not the whole "
                    "batch's rows (and Dropout advances the key by a graph update, which a split step refuses)",
}


def test_every_op_has_a_data_parallel_rule_or_is_refused_on_purpose():
    """passes/data_parallel.py keeps rules by op name (`_RULES`) and by fusion kind (`_KIND_RULES`); an op with
    neither makes the proof refuse any graph feeding it the batch. That must be a decision, listed above."""
    rules, kind_rules = data_parallel._RULES, data_parallel._KIND_RULES
    uncovered = sorted(name for name, op in OPS.items() if name not in rules and op.kind not in kind_rules)
    assert uncovered == sorted(DATA_PARALLEL_REFUSED), (
        f"ops with no data-parallel rule: {uncovered}; refused on purpose: {sorted(DATA_PARALLEL_REFUSED)}. "
        f"Give a new op a rule in passes/data_parallel.py or list it in DATA_PARALLEL_REFUSED with the reason.")
    assert not set(rules) - set(OPS), f"rules for ops that are not registered: {sorted(set(rules) - set(OPS))}"
