"""The value and the gradients of one function of arrays, by each path that computes them: the eager tape, the
generated backward graph compiled with a given pass list, and (tests/torch_reference.py) PyTorch's autograd.

The function returns a float scalar; gradients are taken with respect to every float input, so paths can be
compared element by element, including where they give NaN or infinity, and on zero-size inputs.

    value, gradients = eager_value_and_gradients(function, arrays)
    value, gradients = compiled_value_and_gradients(function, arrays, passes=[])
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

import graphgpt
from graphgpt.passes.autodiff import append_backward
from graphgpt.passes.infer_shapes import infer_shapes
from graphgpt.passes.program_build import build_forward_program


def float_positions(arrays: Sequence[np.ndarray]) -> list[int]:
    return [position for position, array in enumerate(arrays) if np.asarray(array).dtype.kind == "f"]


def eager_value_and_gradients(function: Callable, arrays: Sequence[np.ndarray]
                              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """function run op by op on Tensors, and loss.backward()'s gradients (zeros for an input it never reads)."""
    wanted = float_positions(arrays)
    tensors = [graphgpt.Tensor(array, requires_grad=position in wanted, dtype=np.asarray(array).dtype)
               for position, array in enumerate(arrays)]  # float64 arrays stay float64, as in the compiled run
    result = function(*tensors)
    if result.requires_grad:
        result.backward()
    return result.data, [tensors[position].grad if tensors[position].grad is not None
                         else np.zeros_like(arrays[position]) for position in wanted]


def compiled_value_and_gradients(function: Callable, arrays: Sequence[np.ndarray],
                                 passes: Optional[Sequence] = None, fast_math=False, backend=None
                                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """function traced, its backward pass generated, the passes run (None: the default pipeline; `fast_math`
    and `backend` as graphgpt.compile takes them), and the program's schedule run on the arrays."""
    graph = infer_shapes(graphgpt.trace(function, *arrays).graph)
    names = [graph.inputs[position].name for position in float_positions(arrays)]
    program = build_forward_program(append_backward(graph, names).graph, passes, fast_math=fast_math,
                                    backend=backend)
    value, *gradients = program.run(list(arrays), [])
    return value, gradients


def torch_value_and_gradients(function: Callable, arrays: Sequence[np.ndarray]
                              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The traced graph of function run in PyTorch, and torch.autograd's gradients."""
    from torch_reference import run_in_torch

    graph = graphgpt.trace(function, *arrays).graph
    (value,), gradients = run_in_torch(graph, arrays, wrt=float_positions(arrays))
    return value, gradients


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and bytes: -0.0 differs from 0.0, and NaNs must match bit for bit."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def assert_agree(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-6,
                 atol: float = 1e-12) -> None:
    """Same shape; NaN where the other is NaN, the same infinities; the rest within tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions differ")
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def assert_agree_with_torch(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-7,
                            atol: float = 1e-10) -> None:
    """Where torch's answer is a number, ours is the same number (within tolerance). Where torch's is not, ours
    is not either: the same infinity or NaN where torch's is infinite, NaN or an infinity where torch's is NaN.
    (0 * inf and inf - inf come out NaN or infinite by the order of a formula's terms and by last-bit residues:
    torch's layer norm of one feature takes x - mean as a residue, not 0, and a gradient of inf, not NaN.)"""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol, err_msg=what)
    infinite = np.isinf(expected)
    wrong_infinity = infinite & ~np.isnan(actual) & (actual != expected)
    assert not wrong_infinity.any(), f"{what}: {actual[wrong_infinity]} where torch gives {expected[wrong_infinity]}"
    assert np.isfinite(actual[np.isnan(expected)]).sum() == 0, f"{what}: finite where torch gives NaN"
