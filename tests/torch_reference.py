"""PyTorch as an independent reference: every op of the registry as the torch call that means the same, and a
small interpreter that runs a graphgpt graph in torch, with torch's autograd for the gradients.

Tests that use it skip without torch (`pytest.importorskip("torch")`); importing this module does not need torch.

Where graphgpt decides differently from torch on purpose, the interpreter follows graphgpt and says so
(`DELIBERATE_DIFFERENCES`): a fully masked softmax row (all -inf) is zeros in graphgpt, NaN in torch.

    values, gradients = run_in_torch(graph, arrays, wrt=[0])   # forward outputs, d output[0] / d arrays[0]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DELIBERATE_DIFFERENCES = {
    "softmax": "a row that is entirely -inf has no distribution: zeros (torch: NaN), so a fully masked attention "
               "row stays finite",
    "log_softmax": "a row that is entirely -inf gives -inf throughout (torch: NaN), the log of softmax's zeros, "
                   "and passes its gradient through",
    "cross_entropy": "a fully masked row of logits gives an infinite loss with gradient -onehot (torch: NaN)",
}


def _torch():
    import torch  # imported when used: the module itself must import without torch

    return torch


def _dtype(name: str):
    torch = _torch()
    return {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32, "int64": torch.int64,
            "bool": torch.bool}[name]


def _reduce(function, x, axes, keepdims):
    # torch reads dim=() as "every axis"; graphgpt's axes=() reduces none.
    return x.clone() if not axes else function(x, dim=list(axes), keepdim=keepdims)


def _no_masked_rows(function):
    """softmax or log_softmax, with graphgpt's answer for a row that is entirely -inf (see
    DELIBERATE_DIFFERENCES), value and gradient: softmax's zeros (gradient 0), log_softmax's -inf, the row
    itself (gradient g passed through). torch computes the other rows; the masked ones it sees as zeros."""
    def apply(x, axis):
        torch = _torch()
        masked = torch.isneginf(x).all(dim=axis, keepdim=True) & (x.shape[axis] > 0)
        result = function(torch.where(masked, torch.zeros_like(x), x), axis)
        return torch.where(masked, torch.zeros_like(x) if function is torch.softmax else x, result)
    return apply


def _unslice(x, slices, shape):
    torch = _torch()
    out = torch.zeros(tuple(shape), dtype=x.dtype)
    out[tuple(slice(*triple) for triple in slices)] = x
    return out


def _scatter_add(updates, indices, num_rows):
    torch = _torch()
    width = updates.shape[-1]
    table = torch.zeros((num_rows, width), dtype=updates.dtype)
    return table.index_add(0, indices.reshape(-1).long(), updates.reshape(indices.numel(), width))


def _cross_entropy(logits, targets):
    """torch's nll_loss of the log_softmax above, so a fully masked row is graphgpt's: an infinite loss whose
    gradient is -onehot (softmax's zeros minus the target)."""
    torch = _torch()
    rows = logits.reshape(targets.numel(), logits.shape[-1])
    return torch.nn.functional.nll_loss(TORCH_OPS["log_softmax"](rows, 1), targets.reshape(-1).long())


def _vector_jacobian(function):
    """A backward kernel g -> g^T J of `function` with respect to its first argument, through torch autograd."""
    def apply(g, x, *rest, **attrs):
        torch = _torch()
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(function(leaf, *rest, **attrs), leaf, g)
        return gradient
    return apply


def _gamma_gradient(g, x, eps):
    torch = _torch()
    with torch.enable_grad():
        gamma = torch.ones(x.shape[-1], dtype=x.dtype, requires_grad=True)
        output = torch.nn.functional.layer_norm(x, x.shape[-1:], gamma, None, eps)
        (gradient,) = torch.autograd.grad(output, gamma, g)
    return gradient


def _fused(*operands, program):
    values = list(operands)
    for op, positions in program:
        values.append(TORCH_OPS[op](*[values[position] for position in positions]))
    return values[-1]


def _layer_norm(x, gamma, beta, eps):
    return _torch().nn.functional.layer_norm(x, x.shape[-1:], gamma, beta, eps)


def _gelu(x):
    return _torch().nn.functional.gelu(x, approximate="tanh")


def _build_table():
    torch = _torch()
    torch.set_num_threads(1)  # the reference runs tiny tensors: more threads only contend for the two cores
    functional = torch.nn.functional
    return {
        "neg": torch.neg, "exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sqrt": torch.sqrt,
        "gelu": _gelu,
        "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
        "maximum": torch.maximum,
        "less": torch.lt, "less_equal": torch.le, "greater": torch.gt, "greater_equal": torch.ge,
        "equal": torch.eq, "not_equal": torch.ne,
        "where": torch.where,
        "cast": lambda x, dtype: x.to(_dtype(dtype)),
        "sum": lambda x, axes, keepdims: _reduce(lambda *a, **k: torch.sum(*a, **k, dtype=x.dtype), x, axes,
                                                 keepdims),
        "mean": lambda x, axes, keepdims: _reduce(torch.mean, x, axes, keepdims),
        "max": lambda x, axes, keepdims: _reduce(torch.amax, x, axes, keepdims),
        "matmul": torch.matmul,
        "matmul_permuted": lambda a, b, perm: torch.matmul(a, b).permute(*perm),
        "reshape": lambda x, shape: x.reshape(tuple(shape)),
        "transpose": lambda x, perm: x.permute(*perm),
        "broadcast_to": lambda x, shape: x.broadcast_to(tuple(shape)),
        "slice": lambda x, slices: x[tuple(slice(*triple) for triple in slices)],
        "unslice": _unslice,
        "embedding": lambda weight, indices: weight[indices.long()],
        "scatter_add": _scatter_add,
        "one_hot": lambda indices, num_classes, dtype: functional.one_hot(indices.long(), num_classes).to(
            _dtype(dtype)),
        "constant": lambda value: torch.from_numpy(np.array(value)),
        "softmax": _no_masked_rows(torch.softmax),
        "log_softmax": _no_masked_rows(torch.log_softmax),
        "layer_norm": _layer_norm,
        "cross_entropy": _cross_entropy,
        "concat": lambda *tensors, axis: torch.cat(tensors, dim=axis),
        "gelu_grad": _vector_jacobian(_gelu),
        "layer_norm_grad": _vector_jacobian(lambda x, gamma, eps: _layer_norm(x, gamma, None, eps)),
        "softmax_grad": lambda g, y, axis: torch._softmax_backward_data(g, y, axis, y.dtype),
        "cross_entropy_grad": _vector_jacobian(_cross_entropy),
        "layer_norm_gamma_grad": _gamma_gradient,
        "fused_elementwise": _fused,
    }


TORCH_OPS: dict = {}


def torch_op(name: str):
    """The torch function for op `name`, called as function(*input_tensors, **attrs)."""
    if not TORCH_OPS:
        TORCH_OPS.update(_build_table())
    return TORCH_OPS[name]


def to_torch(array: np.ndarray):
    return _torch().from_numpy(np.array(array, copy=True))


def run_in_torch(graph, arrays: Sequence[np.ndarray], wrt: Sequence[int] = (), params: Sequence[np.ndarray] = ()
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run `graph` in torch on `arrays` (its inputs) and `params`: its outputs, and the gradients of its first
    output (a scalar) with respect to the inputs at positions `wrt` (zeros where the output does not depend on
    one, as graphgpt gives)."""
    torch = _torch()
    torch_op("neg")  # builds the table
    leaves = [to_torch(array) for array in list(arrays) + list(params)]
    for position in wrt:
        leaves[position].requires_grad_(True)
    values = {value.id: leaf for value, leaf in zip(list(graph.inputs) + list(graph.params), leaves)}
    for node in graph.nodes:
        values[node.output.id] = TORCH_OPS[node.op](*[values[value.id] for value in node.inputs], **node.attrs)
    outputs = [values[value.id] for value in graph.outputs]
    gradients = []
    if wrt:
        found = torch.autograd.grad(outputs[0], [leaves[position] for position in wrt], allow_unused=True)
        gradients = [np.zeros(arrays[position].shape, arrays[position].dtype) if gradient is None
                     else gradient.numpy() for position, gradient in zip(wrt, found)]
    return [output.detach().numpy() for output in outputs], gradients
