"""Ops that move data without arithmetic (reshape, transpose, broadcast, slice, embedding gather) and constants."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..types import INTEGER_DTYPES, TensorType
from . import attrs as A
from .registry import OpKind, define_op
from .rules import broadcast_shapes


def _infer_reshape(x: TensorType, shape) -> TensorType:
    result = TensorType(shape, x.dtype)
    if result.size != x.size:
        raise ShapeError(f"cannot reshape {x} ({x.size} elements) to {list(shape)} ({result.size} elements)")
    return result


define_op("reshape", kind=OpKind.INJECTIVE, arity=1, attrs={"shape": A.INTS}, infer=_infer_reshape,
          compute=lambda x, shape: np.reshape(x, shape), doc="same elements, new shape")


def _infer_transpose(x: TensorType, perm) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return TensorType(tuple(x.shape[axis] for axis in perm), x.dtype)


define_op("transpose", kind=OpKind.INJECTIVE, arity=1, attrs={"perm": A.INTS}, infer=_infer_transpose,
          compute=lambda x, perm: np.transpose(x, perm), doc="permute axes: out.shape[i] = x.shape[perm[i]]")


def _infer_broadcast_to(x: TensorType, shape) -> TensorType:
    if len(shape) < x.rank or broadcast_shapes(x.shape, tuple(shape)) != tuple(shape):
        raise ShapeError(f"cannot broadcast {x} to {list(shape)}")
    return TensorType(shape, x.dtype)


define_op("broadcast_to", kind=OpKind.BROADCAST, arity=1, attrs={"shape": A.INTS}, infer=_infer_broadcast_to,
          compute=lambda x, shape: np.broadcast_to(x, shape), doc="broadcast to a larger shape")


def _infer_slice(x: TensorType, slices) -> TensorType:
    if len(slices) != x.rank:
        raise ShapeError(f"needs one (start, stop, step) per axis of {x}, got {len(slices)}")
    shape = []
    for axis, ((start, stop, step), dim) in enumerate(zip(slices, x.shape)):
        if step < 1 or not 0 <= start <= dim or not 0 <= stop <= dim:
            raise ShapeError(f"axis {axis}: slice {start}:{stop}:{step} is not a normalised slice of size {dim} "
                             f"(0 <= start, stop <= size, step >= 1)")
        shape.append(len(range(start, stop, step)))
    return TensorType(tuple(shape), x.dtype)


define_op("slice", kind=OpKind.INJECTIVE, arity=1, attrs={"slices": A.SLICES}, infer=_infer_slice,
          compute=lambda x, slices: x[tuple(slice(*triple) for triple in slices)],
          doc="basic slicing, one (start, stop, step) per axis")


def _infer_embedding(weight: TensorType, indices: TensorType) -> TensorType:
    if weight.rank != 2:
        raise ShapeError(f"weight must be a (num_embeddings, dim) matrix, got {weight}")
    if indices.dtype not in INTEGER_DTYPES:
        raise ShapeError(f"indices must be integers, got {indices}")
    return TensorType(indices.shape + (weight.shape[1],), weight.dtype)


def _embedding(weight: np.ndarray, indices: np.ndarray) -> np.ndarray:
    # NumPy would wrap negative indices around silently; a token id out of range is a bug in the caller's data.
    if indices.size and (indices.min() < 0 or indices.max() >= weight.shape[0]):
        bad = indices[(indices < 0) | (indices >= weight.shape[0])]
        raise IndexError(f"embedding index {int(bad.flat[0])} is out of range for a table of "
                         f"{weight.shape[0]} rows (valid: 0..{weight.shape[0] - 1})")
    return weight[indices]


define_op("embedding", kind=OpKind.INJECTIVE, arity=2, infer=_infer_embedding, compute=_embedding,
          doc="embedding(weight, indices): rows of weight gathered by integer indices")


define_op("constant", kind=OpKind.OPAQUE, arity=0, attrs={"value": A.ARRAY},
          infer=lambda value: TensorType.of(value), compute=lambda value: value,
          doc="a constant array, held in the node's attributes")
