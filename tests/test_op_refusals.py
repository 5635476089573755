"""What op declarations refuse: bad input types and counts with a ShapeError naming the op, malformed attributes,
and out-of-range gather indices with an IndexError. The valid rows come from the op table (test_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest

from graphgpt.ir import OPS, ShapeError, TensorType
from graphgpt.ir.ops.registry import VARIADIC
from test_ops import CASES, Case


# ---- type rules refuse bad inputs ---------------------------------------------------------------------------------


def types(text: str) -> list[TensorType]:
    """'f32[2,3] i64[]' -> [TensorType((2, 3), 'float32'), TensorType((), 'int64')]."""
    return [TensorType.parse(word) for word in text.split()]


BAD_INPUTS = [  # op, input types, (valid) attrs, what the message must say
    ("matmul", "f32[2,3] f32[4,5]", {}, r"inner dimensions differ: f32\[2,3\] @ f32\[4,5\] \(3 != 4\)"),
    ("matmul", "f32[3] f32[3,2]", {}, r"at least 2 dimensions"),
    ("matmul", "f32[2,3,4] f32[5,4,2]", {}, r"shapes \[2\] and \[5\] do not broadcast"),
    ("matmul", "bool[2,2] bool[2,2]", {}, r"expected numeric inputs, got bool\[2,2\] @ bool\[2,2\]"),
    ("matmul", "f32[2,2] f64[2,2]", {}, r"must share one dtype"),
    ("add", "f32[2,3] f32[4]", {}, r"shapes \[2, 3\] and \[4\] do not broadcast \(axis -1 has sizes \[3, 4\]\)"),
    ("add", "f32[2] f64[2]", {}, r"inputs must share one dtype, got f32\[2\], f64\[2\]"),
    ("sub", "i32[2] i64[2]", {}, r"inputs must share one dtype, got i32\[2\], i64\[2\]"),
    ("mul", "bool[2] bool[2]", {}, r"expected numeric inputs, got bool\[2\]"),
    ("maximum", "f32[2,1,4] f32[3,2]", {}, r"do not broadcast"),
    ("div", "i64[2] i64[2]", {}, r"expected a floating-point input, got i64\[2\]"),
    ("pow", "i32[] i32[]", {}, r"expected a floating-point input"),
    ("neg", "bool[3]", {}, r"expected a numeric input, got bool\[3\]"),
    ("less", "f32[2] f64[2]", {}, r"must share one dtype"),
    ("equal", "i64[3] i64[4]", {}, r"do not broadcast"),
    ("where", "f32[2] f32[2] f32[2]", {}, r"condition must be bool, got f32\[2\]"),
    ("where", "bool[2] f32[2] f64[2]", {}, r"must share one dtype"),
    ("where", "bool[3] f32[2] f32[2]", {}, r"do not broadcast"),
    ("reshape", "f32[2,3]", {"shape": (4, 2)}, r"cannot reshape f32\[2,3\] \(6 elements\) to \[4, 2\] \(8 elements\)"),
    ("reshape", "f32[2,3]", {"shape": (-1, 3)}, r"shape \(-1, 3\) must hold non-negative integers"),
    ("transpose", "f32[2,3]", {"perm": (0, 0)}, r"perm \(0, 0\) is not a permutation of the 2 axes of f32\[2,3\]"),
    ("transpose", "f32[2,3]", {"perm": (1,)}, r"perm \(1,\) is not a permutation"),
    ("transpose", "f32[2,3]", {"perm": (-1, 0)}, r"not a permutation"),
    ("sum", "f32[2,3]", {"axes": (2,), "keepdims": False}, r"axes \(2,\) are not sorted unique axes of a rank-2"),
    ("sum", "f32[2,3]", {"axes": (1, 0), "keepdims": False}, r"axes \(1, 0\) are not sorted unique"),
    ("sum", "f32[2,3]", {"axes": (-1,), "keepdims": True}, r"axes \(-1,\) are not sorted unique"),
    ("sum", "f32[2,3]", {"axes": (1, 1), "keepdims": True}, r"axes \(1, 1\) are not sorted unique"),
    ("sum", "bool[2]", {"axes": (0,), "keepdims": False}, r"cannot sum a bool input bool\[2\]"),
    ("mean", "i64[2]", {"axes": (0,), "keepdims": False}, r"expected a floating-point input, got i64\[2\]"),
    ("mean", "f32[2]", {"axes": (1,), "keepdims": False}, r"axes \(1,\) are not sorted unique"),
    ("max", "f32[2,3]", {"axes": (2,), "keepdims": False}, r"axes \(2,\) are not sorted unique"),
    ("max", "f32[2,0]", {"axes": (1,), "keepdims": False}, r"max over an empty axis of f32\[2,0\]"),
    ("broadcast_to", "f32[3]", {"shape": (2, 4)}, r"cannot broadcast f32\[3\] to \[2, 4\]"),
    ("broadcast_to", "f32[2,3]", {"shape": (3,)}, r"cannot broadcast f32\[2,3\] to \[3\]"),
    ("slice", "f32[2,3]", {"slices": ((0, 2, 1),)}, r"needs one \(start, stop, step\) per axis of shape \[2, 3\]"),
    ("slice", "f32[4]", {"slices": ((0, 5, 1),)}, r"axis 0: slice 0:5:1 is not a normalised slice of size 4"),
    ("slice", "f32[4]", {"slices": ((0, 4, 0),)}, r"axis 0: slice 0:4:0 is not a normalised slice"),
    ("slice", "f32[4]", {"slices": ((-1, 4, 1),)}, r"slice -1:4:1 is not a normalised slice"),
    ("unslice", "f32[2]", {"slices": ((0, 3, 1),), "shape": (4,)}, r"f32\[2\] does not fill the slices"),
    ("attention", "f32[2,5,4] f32[2,6,3] f32[2,6,4] f32[5,6]", {"scale": 1.0}, r"k must be \(\.\.\., S, 4\)"),
    ("attention", "f32[2,5,4] f32[2,6,4] f32[2,6,4] f32[5,5]", {"scale": 1.0},
     r"the mask f32\[5,5\] must broadcast against the scores \[2, 5, 6\]"),
    ("attention", "f32[2,5,4] f32[3,5,4] f32[3,5,4] f32[5,5]", {"scale": 1.0}, r"share their leading"),
    ("attention", "i32[5,4] i32[5,4] i32[5,4] i32[5,5]", {"scale": 1.0}, r"expected a floating-point input"),
    ("attention_grad", "f32[2,5,4] f32[2,6,4] f32[2,6,4] f32[5,6] f32[2,5,4] f32[2,5,4]", {"scale": 1.0},
     r"k and v must have q's shape"),
    ("cache_write", "f32[2,3,4,5] f32[2,3,1,5] f32[2]", {}, r"positions must be integers, one per sequence"),
    ("cache_write", "f32[2,3,4,5] f32[2,2,1,5] i64[2]", {}, r"must match the cache f32\[2,3,4,5\] in batch, heads"),
    ("cache_write", "f32[2,3,4,5] f64[2,3,1,5] i64[2]", {}, r"of one dtype, got f32\[2,3,4,5\] and f64"),
    ("embedding", "f32[5,3] f32[2]", {}, r"indices must be integers, got f32\[2\]"),
    ("embedding", "f32[5,3] bool[2]", {}, r"indices must be integers, got bool\[2\]"),
    ("embedding", "f32[5,3,2] i64[2]", {}, r"weight must be a \(num_embeddings, dim\) matrix, got f32\[5,3,2\]"),
    ("scatter_add", "f32[2,4] i64[3]", {"num_rows": 5}, r"updates f32\[2,4\] must have the indices' shape \[3\]"),
    ("scatter_add", "f32[3] i64[3]", {"num_rows": 5}, r"plus one row axis"),
    ("scatter_add", "f32[3,4] f32[3]", {"num_rows": 5}, r"indices must be integers, got f32\[3\]"),
    ("scatter_add", "f32[3,4] i64[3]", {"num_rows": -1}, r"num_rows must be non-negative, got -1"),
    ("one_hot", "f32[3]", {"num_classes": 4, "dtype": "float32"}, r"indices must be integers, got f32\[3\]"),
    ("one_hot", "i64[3]", {"num_classes": 0, "dtype": "float32"}, r"num_classes must be positive, got 0"),
    ("softmax", "f32[2,3]", {"axis": 2}, r"axis 2 is out of range for a rank-2 input f32\[2,3\]"),
    ("softmax", "f32[2,3]", {"axis": -1}, r"axis -1 is out of range"),
    ("softmax", "i64[2,3]", {"axis": 1}, r"expected a floating-point input, got i64\[2,3\]"),
    ("log_softmax", "f32[]", {"axis": 0}, r"axis 0 is out of range for a rank-0 input"),
    ("layer_norm", "f32[2,3] f32[4] f32[3]", {"eps": 1e-5},
     r"gamma and beta must have the shape of the last axis of f32\[2,3\], got f32\[4\] and f32\[3\]"),
    ("layer_norm", "f32[2,3] f32[3] f32[2,3]", {"eps": 1e-5}, r"got f32\[3\] and f32\[2,3\]"),
    ("layer_norm", "f32[] f32[] f32[]", {"eps": 1e-5}, r"gamma and beta must have the shape of the last axis"),
    ("layer_norm", "f32[2,3] f64[3] f32[3]", {"eps": 1e-5}, r"must share one dtype"),
    ("layer_norm", "i64[2,3] i64[3] i64[3]", {"eps": 1e-5}, r"expected a floating-point input"),
    ("layer_norm", "f32[2,3] f32[3] f32[3]", {"eps": 0.0}, r"eps must be positive, got 0.0"),
    ("gelu_grad", "f32[2,3] f32[3,2]", {}, r"the gradient f32\[2,3\] must have the shape of x f32\[3,2\]"),
    ("gelu_grad", "f32[3] f64[3]", {}, r"must share one dtype"),
    ("gelu_grad", "i64[3] i64[3]", {}, r"expected a floating-point input"),
    ("layer_norm_grad", "f32[2,3] f32[2,3] f32[4]", {"eps": 1e-5},
     r"gamma must have the shape of the last axis of f32\[2,3\], got f32\[4\]"),
    ("layer_norm_grad", "f32[2,4] f32[2,3] f32[3]", {"eps": 1e-5}, r"must have the shape of x f32\[2,3\]"),
    ("layer_norm_gamma_grad", "f32[] f32[]", {"eps": 1e-5}, r"normalises the last axis; x f32\[\] has none"),
    ("cross_entropy", "f32[2,3,6] i64[2,4]", {},
     r"logits f32\[2,3,6\] needs targets of shape \[2, 3\], got i64\[2,4\]"),
    ("cross_entropy", "f32[2,6] f32[2]", {}, r"targets must be integer class indices, got f32\[2\]"),
    ("cross_entropy", "i64[2,6] i64[2]", {}, r"expected a floating-point input, got i64\[2,6\]"),
    ("cross_entropy", "f32[] i64[]", {}, r"targets must have the shape of logits without its class axis"),
    ("concat", "f32[2,3] f32[3,3]", {"axis": 1}, r"inputs must match except along axis 1: f32\[2,3\] and f32\[3,3\]"),
    ("concat", "f32[2,3] f64[2,3]", {"axis": 0}, r"inputs must match except along axis 0"),
    ("concat", "f32[2,3] f32[2]", {"axis": 0}, r"inputs must match except along axis 0"),
    ("concat", "f32[2,3] f32[2,3]", {"axis": 2}, r"axis 2 is out of range for rank-2 inputs"),
    ("concat", "f32[] f32[]", {"axis": 0}, r"axis 0 is out of range for rank-0 inputs"),
    ("fused_elementwise", "f32[2]", {"program": (("gelu", (0,)),)}, r"op 'gelu' cannot be fused"),
    ("fused_elementwise", "f32[2]", {"program": (("exp", (1,)),)}, r"instruction exp reads operand \(1,\)"),
    ("fused_elementwise", "f32[2] f32[3]", {"program": (("add", (0, 1)),)},
     r"add: shapes \[2\] and \[3\] do not broadcast"),
    ("fused_elementwise", "i64[2]", {"program": (("exp", (0,)),)}, r"exp: expected a floating-point input"),
    ("dropout_mask", "i64[2]", {"shape": (2,), "p": 0.5, "dtype": "float32"}, r"key must be an int64 scalar"),
    ("dropout_mask", "i32[]", {"shape": (2,), "p": 0.5, "dtype": "float32"}, r"key must be an int64 scalar"),
    ("dropout_mask", "i64[]", {"shape": (2,), "p": 1.0, "dtype": "float32"}, r"p must be at least 0 and below 1"),
    ("dropout_mask", "i64[]", {"shape": (2,), "p": -0.1, "dtype": "float32"}, r"p must be at least 0 and below 1"),
    ("dropout_mask", "i64[]", {"shape": (2,), "p": 0.5, "dtype": "int64"}, r"expected a floating-point"),
]
BAD_INPUTS += [(op, "i64[2]", {}, r"expected a floating-point input, got i64\[2\]")
               for op in ("exp", "log", "tanh", "sqrt", "gelu", "relu", "sigmoid")]


@pytest.mark.parametrize("op,inputs,attrs,message", BAD_INPUTS,
                         ids=[f"{op}({inputs})" for op, inputs, _, _ in BAD_INPUTS])
def test_type_rule_refuses(op, inputs, attrs, message):
    attrs = OPS[op].check_attrs(attrs)  # the attributes are fine: the inputs are what is wrong
    with pytest.raises(ShapeError, match=message) as error:
        OPS[op].infer_type(types(inputs), attrs)
    assert str(error.value).startswith((f"{op}: ", f"{op} ")), "the message should start with the op's name"


def _first_row(op: str) -> Case:
    return next(row for row in CASES if row.op == op)


@pytest.mark.parametrize("op", sorted(OPS))
def test_wrong_number_of_inputs_is_refused(op):
    op_def, row = OPS[op], _first_row(op)
    given = [TensorType((2,), "float32")] * (0 if op_def.arity == VARIADIC else op_def.arity + 1)
    expected = "one or more" if op_def.arity == VARIADIC else op_def.arity
    with pytest.raises(ShapeError, match=rf"^{op} expects {expected} inputs, got {len(given)}$"):
        op_def.infer_type(given, op_def.check_attrs(row.attrs))


# ---- attribute checks ----------------------------------------------------------------------------------------------


BAD_ATTRS = [  # op, attrs, what the message must say
    ("sum", {"axes": (0,)}, r"^sum: expected attributes \['axes', 'keepdims'\], missing \['keepdims'\], unknown \[\]$"),
    ("sum", {"axes": (0,), "keepdims": True, "keep": True}, r"missing \[\], unknown \['keep'\]"),
    ("add", {"axis": 0}, r"^add: expected attributes \[\], missing \[\], unknown \['axis'\]$"),
    ("softmax", {}, r"^softmax: expected attributes \['axis'\], missing \['axis'\]"),
    ("constant", {}, r"^constant: .*missing \['value'\]"),
    ("sum", {"axes": "0", "keepdims": True}, r"^sum: attribute 'axes': expected a tuple of integers, got '0'"),
    ("sum", {"axes": (0.5,), "keepdims": True}, r"^sum: attribute 'axes': expected an integer, got 0.5"),
    ("max", {"axes": (0,), "keepdims": 1}, r"^max: attribute 'keepdims': expected True or False, got 1"),
    ("reshape", {"shape": (2, True)}, r"^reshape: attribute 'shape': expected an integer, got True"),
    ("transpose", {"perm": None}, r"^transpose: attribute 'perm': expected a tuple of integers, got None"),
    ("softmax", {"axis": 1.0}, r"^softmax: attribute 'axis': expected an integer, got 1.0"),
    ("one_hot", {"num_classes": "3", "dtype": "float32"}, r"^one_hot: attribute 'num_classes': expected an integer"),
    ("layer_norm", {"eps": "1e-5"}, r"^layer_norm: attribute 'eps': expected a number, got '1e-5'"),
    ("layer_norm", {"eps": True}, r"^layer_norm: attribute 'eps': expected a number, got True"),
    ("cast", {"dtype": "float16"}, r"^cast: attribute 'dtype': dtype float16 is not supported"),
    ("cast", {"dtype": "nonsense"}, r"^cast: attribute 'dtype': unknown dtype 'nonsense'"),
    ("cast", {"dtype": None}, r"^cast: attribute 'dtype': expected a dtype, got None"),
    ("one_hot", {"num_classes": 3, "dtype": None}, r"^one_hot: attribute 'dtype': expected a dtype, got None"),
    ("slice", {"slices": ((0, 1),)}, r"^slice: attribute 'slices': expected a \(start, stop, step\) triple"),
    ("slice", {"slices": 3}, r"^slice: attribute 'slices': expected a tuple of \(start, stop, step\) triples"),
    ("unslice", {"slices": ((0, 1, 1.5),), "shape": (2,)}, r"^unslice: attribute 'slices': expected an integer"),
    ("constant", {"value": "abc"}, r"^constant: attribute 'value': dtype str\d* is not supported"),
    ("constant", {"value": np.zeros(2, np.float16)}, r"^constant: attribute 'value': dtype float16 is not supported"),
    ("fused_elementwise", {"program": ()}, r"^fused_elementwise: attribute 'program': expected a non-empty tuple"),
    ("fused_elementwise", {"program": (("add",),)}, r"expected an \(op name, operands\) instruction"),
    ("concat", {"axis": None}, r"^concat: attribute 'axis': expected an integer, got None"),
]


@pytest.mark.parametrize("op,attrs,message", BAD_ATTRS, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_ATTRS)])
def test_check_attrs_refuses(op, attrs, message):
    with pytest.raises(ShapeError, match=message):
        OPS[op].check_attrs(attrs)


def test_check_attrs_canonicalises():
    assert OPS["sum"].check_attrs({"axes": [np.int64(1)], "keepdims": np.bool_(True)}) == {"axes": (1,),
                                                                                         "keepdims": True}
    assert OPS["cast"].check_attrs({"dtype": np.float32}) == {"dtype": "float32"}
    assert OPS["cast"].check_attrs({"dtype": "i64"}) == {"dtype": "int64"}
    assert OPS["layer_norm"].check_attrs({"eps": 1}) == {"eps": 1.0}


# ---- runtime index checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,inputs,attrs,message", [
    ("embedding", [np.zeros((5, 3)), np.array([0, 5])], {},
     r"embedding index 5 is out of range for a table of 5 rows \(valid: 0\.\.4\)"),
    ("embedding", [np.zeros((5, 3)), np.array([[1, -1]], np.int32)], {}, r"embedding index -1 is out of range"),
    ("cross_entropy", [np.zeros((2, 4)), np.array([0, 4])], {},
     r"cross_entropy target out of range: targets must lie in 0\.\.3, got values from 0 to 4"),
    ("cross_entropy", [np.zeros((2, 3, 4), np.float32), np.array([[0, 1, 2], [3, -2, 0]])], {},
     r"targets must lie in 0\.\.3, got values from -2 to 3"),
    ("scatter_add", [np.zeros((2, 3)), np.array([0, 3])], {"num_rows": 3}, r"scatter_add index 3 is out of range"),
    ("one_hot", [np.array([-1])], {"num_classes": 3, "dtype": "float32"}, r"one_hot index -1 is out of range"),
    ("cache_write", [np.zeros((2, 1, 4, 3)), np.ones((2, 1, 2, 3)), np.array([0, 3])], {},
     r"cache_write at position 3 of 2 entries does not fit a cache of length 4 \(valid start: 0\.\.2\)"),
    ("cache_write", [np.zeros((1, 1, 4, 3)), np.ones((1, 1, 1, 3)), np.array([-1])], {},
     r"cache_write at position -1 of 1 entries"),
], ids=["embedding-high", "embedding-negative", "cross_entropy-high", "cross_entropy-negative", "scatter_add",
        "one_hot", "cache_write-past-the-end", "cache_write-negative"])
def test_out_of_range_indices_raise(op, inputs, attrs, message):
    with pytest.raises(IndexError, match=message):
        OPS[op].evaluate(inputs, attrs)
