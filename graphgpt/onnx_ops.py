"""The ONNX mapping of every graphgpt op that has one: op name -> a function writing the op as standard ONNX nodes
(opset 20), read by graphgpt/onnx_export.py. An op missing here is refused by the export, naming the node.

A mapping is called as `mapping(emitter, application)` and returns the ONNX name of the op's result. The emitter
(onnx_export.NodeEmitter) makes nodes (`e.op("Softmax", [x], axis=1)`), int64 vectors and scalars (initializers
named after the node) and maps further ops (`e.apply`, for a fused program's instructions); the application holds
the ONNX names of the op's inputs, their graphgpt types, the result's type and the op's attributes. Nothing here
imports onnx: the emitter is the only code that does.

Most ops are one ONNX op. Composites map to the ONNX op that means the same (softmax -> Softmax, layer_norm ->
LayerNormalization, gelu -> Gelu with approximate="tanh", graphgpt's formula); the rest are decomposed into the
same arithmetic the NumPy kernel does, in the same order where the order changes rounding (the backward kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from graphgpt.ir.ops import OPS
from graphgpt.ir.ops.elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI
from graphgpt.ir.types import TensorType


@dataclass(frozen=True)
class Application:
    """One application of a graphgpt op, as a mapping sees it: the ONNX names of its inputs, their types, the type
    of its result and its attributes."""

    op: str
    inputs: list[str]
    input_types: list[TensorType]
    output_type: TensorType
    attrs: dict[str, Any]


Mapping = Callable[[Any, Application], str]


def _one_to_one(onnx_op: str, **fixed) -> Mapping:
    """An op that is one ONNX op over the same inputs, taking no attributes of its own."""
    return lambda e, a: e.op(onnx_op, a.inputs, **fixed)


# graphgpt op -> ONNX op, for ops whose inputs, broadcasting and result are the ONNX op's.
ONE_TO_ONE = {
    "neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "sqrt": "Sqrt", "relu": "Relu", "sigmoid": "Sigmoid",
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max",
    "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater", "greater_equal": "GreaterOrEqual",
    "equal": "Equal", "where": "Where", "matmul": "MatMul", "embedding": "Gather",  # Gather axis 0: rows of weight
}


def _last_axis(e) -> str:
    """The axes input of a reduction over (or an Unsqueeze after) the last axis."""
    return e.ints([-1], "last_axis")


def _reduce(onnx_op: str) -> Mapping:
    def mapping(e, a: Application) -> str:
        if not a.attrs["axes"]:  # graphgpt reduces over no axis (a copy); ONNX's empty axes would reduce all
            return a.inputs[0]
        return e.op(onnx_op, [a.inputs[0], e.ints(a.attrs["axes"], "axes")], keepdims=int(a.attrs["keepdims"]))
    return mapping


def _slice(e, a: Application) -> str:
    (x,), (x_type,) = a.inputs, a.input_types
    cut = [(axis, triple) for axis, triple in enumerate(a.attrs["slices"]) if triple != (0, x_type.shape[axis], 1)]
    if not cut:
        return x
    axes, triples = zip(*cut)
    starts, stops, steps = zip(*triples)
    return e.op("Slice", [x, e.ints(starts, "starts"), e.ints(stops, "ends"), e.ints(axes, "axes"),
                          e.ints(steps, "steps")])


def _unslice(e, a: Application) -> str:
    """Zeros of `shape` with x at the slices: each strided axis dilated first (s - 1 zeros after each element, the
    last element's dropped), then one Pad places x."""
    x, shape = a.inputs[0], list(a.input_types[0].shape)
    begins, ends = [], []
    for axis, ((start, stop, step), length, size) in enumerate(zip(a.attrs["slices"], shape, a.attrs["shape"])):
        if step > 1 and length > 1:
            spread = e.op("Unsqueeze", [x, e.ints([axis + 1], "axes")])
            pads = [0] * (2 * (len(shape) + 1))  # the begins of every axis, then the ends
            pads[len(shape) + 1 + axis + 1] = step - 1  # after each element, along the new axis
            spread = e.op("Pad", [spread, e.ints(pads, "pads")])
            merged = shape[:axis] + [length * step] + shape[axis + 1:]
            spread = e.op("Reshape", [spread, e.ints(merged, "shape")], allowzero=1)
            covered = (length - 1) * step + 1
            x = e.op("Slice", [spread, e.ints([0], "starts"), e.ints([covered], "ends"), e.ints([axis], "axes")])
            shape[axis] = covered
        begin = start if length else 0
        begins.append(begin)
        ends.append(size - begin - shape[axis])
    return e.op("Pad", [x, e.ints(begins + ends, "pads")])


def _scatter_add(e, a: Application) -> str:
    """A zero table with each update row added at its index: ScatterND with reduction="add"."""
    updates, indices = a.inputs
    rows = e.op("ConstantOfShape", [e.ints(a.output_type.shape, "shape")],
                value=np.zeros(1, a.output_type.numpy_dtype))
    return e.op("ScatterND", [rows, _as_index_column(e, indices, a.input_types[1]), updates], reduction="add")


def _as_index_column(e, indices: str, indices_type: TensorType) -> str:
    """indices as int64 with a trailing axis of 1, as ScatterND and GatherElements read them."""
    if indices_type.dtype != "int64":
        indices = e.op("Cast", [indices], to=e.dtype("int64"))
    return e.op("Unsqueeze", [indices, _last_axis(e)])


def _cache_write(e, a: Application) -> str:
    """ScatterND of the new entries (B, H, n, D) into the cache (B, H, S, D) at indices (B, H, n, 3) of
    [b, h, positions[b] + i]: the batch and head coordinates are constants of the static shapes, the position
    coordinate positions[:, None, None] + arange(n), broadcast over the heads."""
    cache, new, positions = a.inputs
    batch, heads, count, _ = a.input_types[1].shape
    grid = np.indices((batch, heads, count), np.int64)  # grid[0][b, h, i] = b, grid[1][b, h, i] = h
    if a.input_types[2].dtype != "int64":
        positions = e.op("Cast", [positions], to=e.dtype("int64"))
    starts = e.op("Unsqueeze", [positions, e.ints([1, 2, 3], "axes")])  # (B, 1, 1, 1)
    where = e.op("Add", [starts, e.array(grid[2][..., None], "offsets")])  # (B, H, n, 1): positions[b] + i
    batch_and_head = e.array(np.stack([grid[0], grid[1]], axis=-1), "batch_and_head")  # (B, H, n, 2)
    return e.op("ScatterND", [cache, e.op("Concat", [batch_and_head, where], axis=-1), new])


def _one_hot_of(e, indices: str, indices_type, num_classes: int, dtype: str) -> str:
    """indices[..., None] == arange(num_classes), cast to the dtype."""
    classes = e.array(np.arange(num_classes, dtype=indices_type.numpy_dtype), "classes")
    column = e.op("Unsqueeze", [indices, _last_axis(e)])
    return e.op("Cast", [e.op("Equal", [column, classes])], to=e.dtype(dtype))


def _one_hot(e, a: Application) -> str:
    return _one_hot_of(e, a.inputs[0], a.input_types[0], a.attrs["num_classes"], a.attrs["dtype"])


def _cross_entropy(e, a: Application) -> str:
    """-mean(log_softmax(logits)[..., target]) over every position."""
    logits, targets = a.inputs
    log_probs = e.op("LogSoftmax", [logits], axis=-1)
    picked = e.op("GatherElements", [log_probs, _as_index_column(e, targets, a.input_types[1])], axis=-1)
    return e.op("Neg", [e.op("ReduceMean", [picked], keepdims=0)])


def _cross_entropy_grad(e, a: Application) -> str:
    """(softmax(logits) - onehot(targets)) g / positions, the positions counted at run time (ONNX's Size)."""
    g, logits, targets = a.inputs
    dtype = a.output_type.dtype
    onehot = _one_hot_of(e, targets, a.input_types[2], a.input_types[1].shape[-1], dtype)
    difference = e.op("Sub", [e.op("Softmax", [logits], axis=-1), onehot])
    per_position = e.op("Reciprocal", [e.op("Cast", [e.op("Size", [targets])], to=e.dtype(dtype))])
    return e.op("Mul", [difference, e.op("Mul", [g, per_position])])


def _softmax_grad(e, a: Application) -> str:
    """y (g - sum(g y)) along the axis."""
    g, y = a.inputs
    total = e.op("ReduceSum", [e.op("Mul", [g, y]), e.ints([a.attrs["axis"]], "axes")], keepdims=1)
    return e.op("Mul", [y, e.op("Sub", [g, total])])


def _fused_elementwise(e, a: Application) -> str:
    """The program's instructions, each mapped as the op it names."""
    names, types = list(a.inputs), list(a.input_types)
    for op, operands in a.attrs["program"]:
        operand_types = [types[operand] for operand in operands]
        result_type = OPS[op].infer_type(operand_types, {})
        names.append(e.apply(op, [names[operand] for operand in operands], operand_types, result_type, {}))
        types.append(result_type)
    return names[-1]


def _gelu_grad(e, a: Application) -> str:
    """g (0.5 c (1 + 3k x^2) (1 - t) (1 + t) x + 0.5 (1 + t)), t = tanh(c x (1 + k x^2)): the kernel's order
    (ir/ops/gradients.py)."""
    g, x = a.inputs
    dtype = a.output_type.dtype
    c, k = GELU_SQRT_2_OVER_PI, GELU_CUBIC

    def scalar(value):
        return e.scalar(value, dtype)

    square = e.op("Mul", [x, x])
    inner = e.op("Mul", [e.op("Add", [e.op("Mul", [square, scalar(c * k)]), scalar(c)]), x])
    one_plus_t = e.op("Add", [e.op("Tanh", [inner]), scalar(1.0)])
    slope = e.op("Add", [e.op("Mul", [square, scalar(1.5 * c * k)]), scalar(0.5 * c)])
    one_minus_t = e.op("Sub", [scalar(2.0), one_plus_t])
    product = e.op("Mul", [e.op("Mul", [e.op("Mul", [slope, one_minus_t]), one_plus_t]), x])
    total = e.op("Add", [product, e.op("Mul", [one_plus_t, scalar(0.5)])])
    return e.op("Mul", [total, g])


def _normalized(e, x: str, dtype: str, eps: float) -> tuple[str, str]:
    """(x - mean) / sqrt(biased variance + eps) along the last axis, and 1 / that root (as normalize_rows)."""
    last = _last_axis(e)
    centred = e.op("Sub", [x, e.op("ReduceMean", [x, last], keepdims=1)])
    variance = e.op("ReduceMean", [e.op("Mul", [centred, centred]), last], keepdims=1)
    root = e.op("Sqrt", [e.op("Add", [variance, e.scalar(eps, dtype)])])
    inverse_std = e.op("Div", [e.scalar(1.0, dtype), root])
    return e.op("Mul", [centred, inverse_std]), inverse_std


def _layer_norm_grad(e, a: Application) -> str:
    """(g gamma - mean(g gamma) - x^ mean(g gamma x^)) / std, the kernel's order."""
    g, x, gamma = a.inputs
    normalized, inverse_std = _normalized(e, x, a.output_type.dtype, a.attrs["eps"])
    last = _last_axis(e)
    scaled = e.op("Mul", [g, gamma])
    projection = e.op("Mul", [normalized, e.op("ReduceMean", [e.op("Mul", [scaled, normalized]), last], keepdims=1)])
    centred = e.op("Sub", [e.op("Sub", [scaled, projection]), e.op("ReduceMean", [scaled, last], keepdims=1)])
    return e.op("Mul", [centred, inverse_std])


def _layer_norm_gamma_grad(e, a: Application) -> str:
    """The sum over every row of g x^."""
    g, x = a.inputs
    normalized, _ = _normalized(e, x, a.output_type.dtype, a.attrs["eps"])
    product = e.op("Mul", [normalized, g])
    rows = list(range(a.input_types[1].rank - 1))
    return e.op("ReduceSum", [product, e.ints(rows, "axes")], keepdims=0) if rows else product


def _attention_weights(e, a: Application, q: str, k: str, mask: str) -> str:
    """softmax(q @ k^T * scale + mask): the composite attention decomposes into, in its order."""
    rank = a.input_types[0].rank
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = e.op("MatMul", [q, e.op("Transpose", [k], perm=swap)])
    scaled = e.op("Mul", [scores, e.scalar(a.attrs["scale"], a.input_types[0].dtype)])
    return e.op("Softmax", [e.op("Add", [scaled, mask])], axis=-1), swap


def _attention(e, a: Application) -> str:
    q, k, v, mask = a.inputs
    weights, _ = _attention_weights(e, a, q, k, mask)
    return e.op("MatMul", [weights, v])


def _attention_grad(e, a: Application) -> str:
    """dq, dk, dv stacked on a new first axis, from the whole weights (ONNX has no blocks to keep them small)."""
    q, k, v, mask, out, dout = a.inputs
    weights, swap = _attention_weights(e, a, q, k, mask)
    row_dot = e.op("ReduceSum", [e.op("Mul", [dout, out]), _last_axis(e)], keepdims=1)
    d_weights = e.op("MatMul", [dout, e.op("Transpose", [v], perm=swap)])
    d_scores = e.op("Mul", [e.op("Mul", [weights, e.op("Sub", [d_weights, row_dot])]),
                            e.scalar(a.attrs["scale"], a.input_types[0].dtype)])
    grads = [e.op("MatMul", [d_scores, k]), e.op("MatMul", [e.op("Transpose", [d_scores], perm=swap), q]),
             e.op("MatMul", [e.op("Transpose", [weights], perm=swap), dout])]
    first = e.ints([0], "first_axis")
    return e.op("Concat", [e.op("Unsqueeze", [grad, first]) for grad in grads], axis=0)


MAPPINGS: dict[str, Mapping] = {
    **{op: _one_to_one(onnx_op) for op, onnx_op in ONE_TO_ONE.items()},
    "not_equal": lambda e, a: e.op("Not", [e.op("Equal", a.inputs)]),
    "gelu": _one_to_one("Gelu", approximate="tanh"),  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as gelu_into
    "cast": lambda e, a: e.op("Cast", a.inputs, to=e.dtype(a.attrs["dtype"])),
    "sum": _reduce("ReduceSum"),
    "mean": _reduce("ReduceMean"),
    "max": _reduce("ReduceMax"),
    "softmax": lambda e, a: e.op("Softmax", a.inputs, axis=a.attrs["axis"]),
    "log_softmax": lambda e, a: e.op("LogSoftmax", a.inputs, axis=a.attrs["axis"]),
    "layer_norm": lambda e, a: e.op("LayerNormalization", a.inputs, axis=-1, epsilon=a.attrs["eps"]),
    "cross_entropy": _cross_entropy,
    "reshape": lambda e, a: e.op("Reshape", [a.inputs[0], e.ints(a.attrs["shape"], "shape")], allowzero=1),
    "transpose": lambda e, a: e.op("Transpose", a.inputs, perm=list(a.attrs["perm"])),
    "matmul_permuted": lambda e, a: e.op("Transpose", [e.op("MatMul", a.inputs)], perm=list(a.attrs["perm"])),
    "broadcast_to": lambda e, a: e.op("Expand", [a.inputs[0], e.ints(a.attrs["shape"], "shape")]),
    "slice": _slice,
    "unslice": _unslice,
    "concat": lambda e, a: e.op("Concat", a.inputs, axis=a.attrs["axis"]),
    "scatter_add": _scatter_add,
    "cache_write": _cache_write,
    "one_hot": _one_hot,
    "constant": lambda e, a: e.op("Constant", [], value=np.asarray(a.attrs["value"])),
    "reciprocal_size": lambda e, a: e.op("Constant", [], value=np.asarray(1.0 / a.attrs["size"], a.attrs["dtype"])),
    "fused_elementwise": _fused_elementwise,
    "gelu_grad": _gelu_grad,
    "softmax_grad": _softmax_grad,
    "cross_entropy_grad": _cross_entropy_grad,
    "layer_norm_grad": _layer_norm_grad,
    "layer_norm_gamma_grad": _layer_norm_gamma_grad,
    "attention": _attention,
    "attention_grad": _attention_grad,
}
