"""Ops that move data without arithmetic (reshape, transpose, broadcast, slice, embedding gather) and constants."""

from __future__ import annotations

import itertools

import numpy as np

from ..dims import Size, decide, same_shape, same_size, slice_length
from ..errors import ShapeError
from ..types import INTEGER_DTYPES, TensorType
from . import attrs as A
from .registry import VARIADIC, OpKind, ViewLayout, define_op
from .rules import broadcast_shapes


def _infer_reshape(x: TensorType, shape) -> TensorType:
    result = TensorType(shape, x.dtype)
    if not same_shape((result.size,), (x.size,)):
        raise ShapeError(f"cannot reshape {x} ({x.size} elements) to {list(shape)} ({result.size} elements)")
    return result


define_op("reshape", kind=OpKind.INJECTIVE, arity=1, attrs={"shape": A.SHAPE}, infer=_infer_reshape,
          compute=lambda x, shape: np.reshape(x, shape), view=ViewLayout.RESHAPE,
          # Into a buffer only when x is not contiguous (then reshape must copy anyway): C order, as reshape.
          compute_into=lambda out, x, shape: np.copyto(out.reshape(x.shape), x),
          vjp=lambda g, out, x, shape: (lambda: g.reshape(x.shape),), doc="same elements, new shape")


def _infer_transpose(x: TensorType, perm) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return TensorType(tuple(x.shape[axis] for axis in perm), x.dtype)


define_op("transpose", kind=OpKind.INJECTIVE, arity=1, attrs={"perm": A.INTS}, infer=_infer_transpose,
          compute=lambda x, perm: np.transpose(x, perm), view=ViewLayout.STRIDED,
          vjp=lambda g, out, x, perm: (lambda: g.permute(*np.argsort(perm)),),
          doc="permute axes: out.shape[i] = x.shape[perm[i]]")


def _infer_broadcast_to(x: TensorType, shape) -> TensorType:
    try:
        fits = len(shape) >= x.rank and same_shape(broadcast_shapes(x.shape, tuple(shape)), tuple(shape))
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {x} to {list(shape)}")
    return TensorType(shape, x.dtype)


define_op("broadcast_to", kind=OpKind.BROADCAST, arity=1, attrs={"shape": A.SHAPE}, infer=_infer_broadcast_to,
          compute=lambda x, shape: np.broadcast_to(x, shape), view=ViewLayout.STRIDED,
          vjp=lambda g, out, x, shape: (lambda: g.sum_to(x.shape),), doc="broadcast to a larger shape")


def _sliced_shape(shape: tuple[Size, ...], slices) -> tuple[Size, ...]:
    if len(slices) != len(shape):
        raise ShapeError(f"needs one (start, stop, step) per axis of shape {list(shape)}, got {len(slices)}")
    result = []
    for axis, ((start, stop, step), dim) in enumerate(zip(slices, shape)):
        if step < 1 or not all(decide(0, "<=", bound) and decide(bound, "<=", dim) for bound in (start, stop)):
            raise ShapeError(f"axis {axis}: slice {start}:{stop}:{step} is not a normalised slice of size {dim} "
                             f"(0 <= start, stop <= size, step >= 1)")
        result.append(slice_length(start, stop, step))
    return tuple(result)


def _python_slices(slices) -> tuple[slice, ...]:
    return tuple(slice(*triple) for triple in slices)


define_op("slice", kind=OpKind.INJECTIVE, arity=1, attrs={"slices": A.SLICES},
          infer=lambda x, slices: TensorType(_sliced_shape(x.shape, slices), x.dtype),
          # The trailing `...` keeps a 0-d x's slice a 0-d view: x[()] would be a NumPy scalar, a copy.
          compute=lambda x, slices: x[_python_slices(slices) + (Ellipsis,)], view=ViewLayout.STRIDED,
          vjp=lambda g, out, x, slices: (lambda: g.unslice(slices, x.shape),),
          doc="basic slicing, one (start, stop, step) per axis")


def _infer_unslice(x: TensorType, slices, shape) -> TensorType:
    if not same_shape(_sliced_shape(tuple(shape), slices), x.shape):
        raise ShapeError(f"{x} does not fill the slices {slices} of shape {list(shape)}")
    return TensorType(shape, x.dtype)


def _unslice_into(out: np.ndarray, x: np.ndarray, slices, shape) -> None:
    out.fill(0)
    out[_python_slices(slices)] = x


define_op("unslice", kind=OpKind.INJECTIVE, arity=1, attrs={"slices": A.SLICES, "shape": A.SHAPE},
          infer=_infer_unslice, compute_into=_unslice_into,
          vjp=lambda g, out, x, slices, shape: (lambda: g[_python_slices(slices)],),
          doc="zeros of `shape` with x placed at `slices` (the gradient of slice)")


def _infer_embedding(weight: TensorType, indices: TensorType) -> TensorType:
    if weight.rank != 2:
        raise ShapeError(f"weight must be a (num_embeddings, dim) matrix, got {weight}")
    if indices.dtype not in INTEGER_DTYPES:
        raise ShapeError(f"indices must be integers, got {indices}")
    return TensorType(indices.shape + (weight.shape[1],), weight.dtype)


def _check_indices(indices: np.ndarray, count: int, what: str) -> None:
    # NumPy would wrap negative indices around silently; a token id out of range is a bug in the caller's data.
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        bad = indices[(indices < 0) | (indices >= count)]
        raise IndexError(f"{what} index {int(bad.flat[0])} is out of range for a table of "
                         f"{count} rows (valid: 0..{count - 1})")


def _embedding_into(out: np.ndarray, weight: np.ndarray, indices: np.ndarray) -> None:
    _check_indices(indices, weight.shape[0], "embedding")
    # mode="clip" (on indices just checked, it never clips): take's default mode="raise" copies `out` through a
    # buffer, twice the memory traffic (the `graphgpt train` GPT's token embedding: 5.1 -> 2.4 us warm).
    np.take(weight, indices, axis=0, out=out, mode="clip")


define_op("embedding", kind=OpKind.INJECTIVE, arity=2, infer=_infer_embedding, compute_into=_embedding_into,
          vjp=lambda g, out, weight, indices: (lambda: g.scatter_add(indices, weight.shape[0]), None),
          doc="embedding(weight, indices): rows of weight gathered by integer indices")


def _infer_scatter_add(updates: TensorType, indices: TensorType, num_rows: int) -> TensorType:
    if indices.dtype not in INTEGER_DTYPES:
        raise ShapeError(f"indices must be integers, got {indices}")
    if updates.shape[:indices.rank] != indices.shape or updates.rank != indices.rank + 1:
        raise ShapeError(f"updates {updates} must have the indices' shape {list(indices.shape)} plus one row axis")
    if num_rows < 0:
        raise ShapeError(f"num_rows must be non-negative, got {num_rows}")
    return TensorType((num_rows, updates.shape[-1]), updates.dtype)


def _scatter_add_into(out: np.ndarray, updates: np.ndarray, indices: np.ndarray, num_rows: int) -> None:
    _check_indices(indices, num_rows, "scatter_add")
    # Rows sorted by index, then each run of equal indices summed with one reduceat: 3-6x faster (cold, warm) than
    # np.add.at's row-at-a-time loop on a GPT's embedding gradient (benchmarks/kernels.py).
    flat_indices = indices.reshape(-1)
    out.fill(0)
    if out.size == 0 or flat_indices.size == 0:  # no rows, rows of no width, or nothing to add
        return
    order = np.argsort(flat_indices, kind="stable")
    sorted_indices = flat_indices[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_indices[1:] != sorted_indices[:-1]])
    rows = updates.reshape(flat_indices.size, updates.shape[-1])[order]
    out[sorted_indices[run_starts]] = np.add.reduceat(rows, run_starts, axis=0)


define_op("scatter_add", kind=OpKind.OPAQUE, arity=2, attrs={"num_rows": A.INT}, infer=_infer_scatter_add,
          compute_into=_scatter_add_into, cost=lambda out, updates, indices, num_rows: updates.size,
          vjp=lambda g, out, updates, indices, num_rows: (lambda: g.embedding(indices), None),
          doc="scatter_add(updates, indices): a (num_rows, dim) table adding each update row at its index "
              "(the gradient of embedding)")


def _infer_one_hot(indices: TensorType, num_classes: int, dtype: str) -> TensorType:
    if indices.dtype not in INTEGER_DTYPES:
        raise ShapeError(f"indices must be integers, got {indices}")
    if num_classes < 1:
        raise ShapeError(f"num_classes must be positive, got {num_classes}")
    return TensorType(indices.shape + (num_classes,), dtype)


def _one_hot_into(out: np.ndarray, indices: np.ndarray, num_classes: int, dtype: str) -> None:
    _check_indices(indices, num_classes, "one_hot")
    out.fill(0)
    np.put_along_axis(out, indices[..., None], 1, axis=-1)


define_op("one_hot", kind=OpKind.INJECTIVE, arity=1, attrs={"num_classes": A.INT, "dtype": A.DTYPE},
          infer=_infer_one_hot, compute_into=_one_hot_into, vjp=lambda g, out, indices, num_classes, dtype: (None,),
          doc="one_hot(indices): 1 at each index along a new last axis of num_classes, 0 elsewhere")


define_op("constant", kind=OpKind.OPAQUE, arity=0, attrs={"value": A.ARRAY},
          infer=lambda value: TensorType.of(value), compute=lambda value: value, vjp=lambda g, out, value: (),
          doc="a constant array, held in the node's attributes")


define_op("reciprocal_size", kind=OpKind.OPAQUE, arity=0, attrs={"size": A.SIZE, "dtype": A.DTYPE},
          infer=lambda size, dtype: TensorType((), dtype), vjp=lambda g, out, size, dtype: (),
          compute=lambda size, dtype: np.asarray(1.0 / size, dtype),
          doc="1 / size as a scalar: a mean's scale where the count is a symbolic size (B*T), a number once the "
              "graph is specialised")


def _infer_concat(*types: TensorType, axis: int) -> TensorType:
    first = types[0]
    if not 0 <= axis < first.rank:
        raise ShapeError(f"axis {axis} is out of range for rank-{first.rank} inputs")
    for other in types[1:]:
        if other.dtype != first.dtype or other.rank != first.rank or not all(
                same_size(a, b) for position, (a, b) in enumerate(zip(first.shape, other.shape)) if position != axis):
            raise ShapeError(f"inputs must match except along axis {axis}: {first} and {other}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(tuple(shape), first.dtype)


def _concat_vjp(g, out, *inputs, axis):
    def part(start, size):
        return lambda: g[(slice(None),) * axis + (slice(start, start + size),)]

    starts = itertools.accumulate((x.shape[axis] for x in inputs), initial=0)  # sizes may be symbolic
    return tuple(part(start, x.shape[axis]) for start, x in zip(starts, inputs))


define_op("concat", kind=OpKind.INJECTIVE, arity=VARIADIC, attrs={"axis": A.INT}, infer=_infer_concat,
          compute=lambda *arrays, axis: np.concatenate(arrays, axis=axis),
          compute_into=lambda out, *arrays, axis: np.concatenate(arrays, axis=axis, out=out),
          vjp=_concat_vjp, doc="join inputs along an axis")


def _infer_cache_write(cache: TensorType, new: TensorType, positions: TensorType) -> TensorType:
    if cache.rank != 4 or new.rank != 4 or new.dtype != cache.dtype:
        raise ShapeError(f"expected a cache (batch, heads, length, dim) and new entries (batch, heads, n, dim) of "
                         f"one dtype, got {cache} and {new}")
    if not (same_size(new.shape[0], cache.shape[0]) and same_size(new.shape[1], cache.shape[1])
            and same_size(new.shape[3], cache.shape[3])):
        raise ShapeError(f"new entries {new} must match the cache {cache} in batch, heads and dim")
    if positions.dtype not in INTEGER_DTYPES or positions.rank != 1 or not same_size(positions.shape[0],
                                                                                       cache.shape[0]):
        raise ShapeError(f"positions must be integers, one per sequence ({cache.shape[0]}), got {positions}")
    return cache


def _cache_write_into(out: np.ndarray, cache: np.ndarray, new: np.ndarray, positions: np.ndarray) -> None:
    length, count = cache.shape[2], new.shape[2]
    starts = positions.tolist()  # a few sequences: Python ints check and index faster than NumPy reductions
    for start in starts:
        if not 0 <= start <= length - count:
            raise IndexError(f"cache_write at position {start} of {count} entries does not fit a cache of "
                             f"length {length} (valid start: 0..{length - count})")
    # Given the cache's own memory (an update planned in place: the same array, or a buffer it dies into), only
    # the new entries move. The memory plan never gives an output that overlaps an input only in part.
    if out is not cache and not np.may_share_memory(out, cache):
        np.copyto(out, cache)
    for row, start in enumerate(starts):
        out[row, :, start:start + count] = new[row]


define_op("cache_write", kind=OpKind.OPAQUE, arity=3, infer=_infer_cache_write, compute_into=_cache_write_into,
          updates_first_input=True, vjp=lambda g, out, cache, new, positions: (None, None, None),  # decoding only
          doc="cache_write(cache, new, positions): the (batch, heads, length, dim) cache with each sequence's n new "
              "entries written from its position on (a KV cache's step; graph state updated in place)")
