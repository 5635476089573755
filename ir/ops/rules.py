"""Shared pieces of type rules: broadcasting, dtype agreement and axis checks, so each op's `infer` stays short."""

from __future__ import annotations

from ..dims import Dim, Size, active_shape_env, decide
from ..errors import ShapeError
from ..types import FLOAT_DTYPES, TensorType


def broadcast_shapes(*shapes: tuple[Size, ...]) -> tuple[Size, ...]:
    """NumPy broadcasting of static shapes, with an error that shows both shapes.

    Only a literal 1 broadcasts: a symbolic size (ir/dims.py) meets a 1 or itself, never another size, since it
    may be 1 or any other number (a rule for B against 1 gives B, right when B is 1 too).

    >>> broadcast_shapes((2, 1, 4), (3, 1))
    (2, 3, 4)
    """
    rank = max((len(shape) for shape in shapes), default=0)
    result = []
    for axis in range(rank):
        dims = {shape[len(shape) - rank + axis] for shape in shapes if len(shape) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1 and active_shape_env() is not None:
            # A symbolic size meeting another size: equal under a guard (T == 5) when the example says so.
            first = min(dims, key=lambda dim: isinstance(dim, Dim))  # a number, if there is one
            if all(decide(dim, "==", first) for dim in dims):
                dims = {first}
        if len(dims) > 1:
            raise ShapeError(f"shapes {' and '.join(str(list(s)) for s in shapes)} do not broadcast "
                             f"(axis {axis - rank} has sizes {sorted(dims, key=str)})")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def same_dtype(*types: TensorType) -> str:
    """The common dtype of the inputs; the IR never promotes silently (cast explicitly with astype). The refusal
    says how to fix it, suggesting float32 (the parameters' dtype) when it is one of the two."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        target = "float32" if "float32" in dtypes else types[0].dtype
        raise ShapeError(f"inputs must share one dtype, got {', '.join(str(t) for t in types)} (graphgpt never "
                         f"promotes); make them one dtype: x.astype('{target}'), or Tensor(data, dtype='{target}')")
    return dtypes.pop()


def require_float(*types: TensorType) -> None:
    for t in types:
        if t.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"expected a floating-point input, got {t}")


def broadcast_types(*types: TensorType) -> TensorType:
    return TensorType(broadcast_shapes(*(t.shape for t in types)), same_dtype(*types))


def check_axes(x: TensorType, axes: tuple[int, ...]) -> None:
    """Axes must be non-negative, in range, sorted and unique (the op-building API normalises them)."""
    if list(axes) != sorted(set(axes)) or any(axis < 0 or axis >= x.rank for axis in axes):
        raise ShapeError(f"axes {axes} are not sorted unique axes of a rank-{x.rank} input {x}")


def reduced_shape(x: TensorType, axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    check_axes(x, axes)
    if keepdims:
        return tuple(1 if axis in axes else dim for axis, dim in enumerate(x.shape))
    return tuple(dim for axis, dim in enumerate(x.shape) if axis not in axes)


def check_axis(x: TensorType, axis: int) -> None:
    if not 0 <= axis < x.rank:
        raise ShapeError(f"axis {axis} is out of range for a rank-{x.rank} input {x}")
