"""The op-building API: Python operators and methods for every op, written once.

`TensorOps` is a mixin. A class that holds a tensor (graphgpt.Tensor, which computes eagerly or emits graph nodes
while tracing; a symbolic handle the autodiff pass uses to emit backward nodes) supplies three things:

  - `type` (property): its TensorType;
  - `_apply(op, inputs, attrs)`: run or emit op `op` and wrap the result;
  - `_lift(array)`: wrap a NumPy array (a Python scalar operand, a constant) as one of its own.

Everything else (broadcasting operands, normalising axes and shapes into the canonical attributes the op
declarations expect) lives here, so `x * 0.5`, `x.sum(-1, keepdims=True)` or `x[:, -1]` mean the same wherever
they are written, and gradient rules read like algebra: `(g * b, g * a)`.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import numpy as np

from .dims import Dim, Size, as_size, decide, exact_quotient, is_one, same_shape, slice_length
from .errors import ShapeError
from .types import TensorType

Axes = Union[None, int, Sequence[int]]


class TensorOps:
    __slots__ = ()
    # Let NumPy defer to our reflected operators (`np_array * tensor` calls tensor.__rmul__).
    __array_priority__ = 1000

    # ---- to be supplied by the concrete class ----------------------------------------------------------------
    @property
    def type(self) -> TensorType:
        raise NotImplementedError

    def _apply(self, op: str, inputs: tuple, attrs: Optional[dict] = None):
        raise NotImplementedError

    def _lift(self, array: np.ndarray):
        raise NotImplementedError

    # ---- type facts ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[Size, ...]:
        """Sizes: ints, or symbolic sizes (ir/dims.py) in a graph traced for every batch or length."""
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.rank

    @property
    def size(self) -> int:
        return self.type.size

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # ---- operands -----------------------------------------------------------------------------------------------
    def _operand(self, other):
        """Turn a Python scalar or array into a tensor of our own kind. A Python scalar takes our dtype (it is
        'weak', as in NumPy 2, JAX and PyTorch); an array keeps its own, and mismatches are errors, never silent
        promotions."""
        if isinstance(other, TensorOps):
            return other
        if isinstance(other, (bool, np.bool_)):
            return self._lift(np.asarray(other, dtype=self.dtype if self.dtype == "bool" else "bool"))
        if isinstance(other, numbers.Number):
            if isinstance(other, numbers.Integral) or self.type.is_float:
                return self._lift(np.asarray(other, dtype=self.dtype))
            raise ShapeError(f"cannot combine a {self.type} tensor with the float {other!r}; "
                             f"cast the tensor first with .astype('float32')")
        return self._lift(np.asarray(other))

    def _binary(self, op: str, other, reverse: bool = False):
        other = self._operand(other)
        return self._apply(op, (other, self) if reverse else (self, other))

    # ---- arithmetic ---------------------------------------------------------------------------------------------
    def __add__(self, other): return self._binary("add", other)
    def __radd__(self, other): return self._binary("add", other, reverse=True)
    def __sub__(self, other): return self._binary("sub", other)
    def __rsub__(self, other): return self._binary("sub", other, reverse=True)
    def __mul__(self, other): return self._binary("mul", other)
    def __rmul__(self, other): return self._binary("mul", other, reverse=True)
    def __truediv__(self, other): return self._binary("div", other)
    def __rtruediv__(self, other): return self._binary("div", other, reverse=True)
    def __pow__(self, other): return self._binary("pow", other)
    def __rpow__(self, other): return self._binary("pow", other, reverse=True)
    def __matmul__(self, other): return self._binary("matmul", other)
    def __rmatmul__(self, other): return self._binary("matmul", other, reverse=True)
    def __neg__(self): return self._apply("neg", (self,))

    # Comparisons give bool tensors. __eq__ stays Python's identity so tensors remain usable as dict keys;
    # use .equal() for an elementwise comparison.
    def __lt__(self, other): return self._binary("less", other)
    def __le__(self, other): return self._binary("less_equal", other)
    def __gt__(self, other): return self._binary("greater", other)
    def __ge__(self, other): return self._binary("greater_equal", other)
    def equal(self, other): return self._binary("equal", other)
    def not_equal(self, other): return self._binary("not_equal", other)

    def matmul(self, other): return self._binary("matmul", other)
    def maximum(self, other): return self._binary("maximum", other)

    def where(self, if_true, if_false):
        """Elementwise select with self as the bool condition: `cond.where(a, b)`."""
        anchor = next((branch for branch in (if_true, if_false) if isinstance(branch, TensorOps)), None)
        if anchor is None:
            raise TypeError("where needs at least one tensor among its two branches")
        return self._apply("where", (self, anchor._operand(if_true), anchor._operand(if_false)))

    # ---- elementwise maps ---------------------------------------------------------------------------------------
    def exp(self): return self._apply("exp", (self,))
    def log(self): return self._apply("log", (self,))
    def tanh(self): return self._apply("tanh", (self,))
    def sqrt(self): return self._apply("sqrt", (self,))
    def gelu(self): return self._apply("gelu", (self,))
    def relu(self): return self._apply("relu", (self,))
    def sigmoid(self): return self._apply("sigmoid", (self,))

    def astype(self, dtype):
        return self._apply("cast", (self,), {"dtype": dtype})

    # ---- reductions ---------------------------------------------------------------------------------------------
    def _axes(self, axis: Axes) -> tuple[int, ...]:
        """None -> every axis; negative axes counted from the end; sorted and unique."""
        if axis is None:
            return tuple(range(self.ndim))
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        normalised = set()
        for item in axes:
            if not -self.ndim <= item < self.ndim:
                raise ShapeError(f"axis {item} is out of range for a tensor of shape {list(self.shape)}")
            normalised.add(int(item) % self.ndim)
        return tuple(sorted(normalised))

    def _reduce(self, op: str, axis: Axes, keepdims: bool):
        return self._apply(op, (self,), {"axes": self._axes(axis), "keepdims": bool(keepdims)})

    def sum(self, axis: Axes = None, keepdims: bool = False): return self._reduce("sum", axis, keepdims)
    def mean(self, axis: Axes = None, keepdims: bool = False): return self._reduce("mean", axis, keepdims)
    def max(self, axis: Axes = None, keepdims: bool = False): return self._reduce("max", axis, keepdims)

    # ---- composites ---------------------------------------------------------------------------------------------
    def _one_axis(self, axis: int) -> int:
        return self._axes(axis)[0]

    def softmax(self, axis: int = -1): return self._apply("softmax", (self,), {"axis": self._one_axis(axis)})
    def log_softmax(self, axis: int = -1):
        return self._apply("log_softmax", (self,), {"axis": self._one_axis(axis)})

    def layer_norm(self, gamma, beta, eps: float = 1e-5):
        return self._apply("layer_norm", (self, self._operand(gamma), self._operand(beta)), {"eps": float(eps)})

    # Backward kernels (ir/ops/gradients.py), called on the incoming gradient by the gradient rules.
    def gelu_grad(self, x): return self._apply("gelu_grad", (self, self._operand(x)))

    def layer_norm_grad(self, x, gamma, eps: float):
        return self._apply("layer_norm_grad", (self, self._operand(x), self._operand(gamma)), {"eps": float(eps)})

    def layer_norm_gamma_grad(self, x, eps: float):
        return self._apply("layer_norm_gamma_grad", (self, self._operand(x)), {"eps": float(eps)})

    def softmax_grad(self, y, axis: int):
        return self._apply("softmax_grad", (self, self._operand(y)), {"axis": axis})

    def cross_entropy_grad(self, logits, targets):
        return self._apply("cross_entropy_grad", (self, self._operand(logits), self._operand(targets)))

    def cross_entropy(self, targets):
        """Mean cross-entropy of these logits against integer class targets."""
        return self._apply("cross_entropy", (self, self._operand(targets)))

    def reciprocal_of(self, count):
        """1 / count as an operand for arithmetic with this tensor: a Python float for a number (lifted to our
        dtype, as any scalar), a `reciprocal_size` node for a symbolic size (ir/dims.py), the same value once the
        graph is specialised."""
        if isinstance(count, Dim):
            return self._apply("reciprocal_size", (), {"size": count, "dtype": self.dtype})
        return 1.0 / count

    def embedding(self, indices):
        """Rows of this (num_embeddings, dim) table gathered by integer `indices`."""
        return self._apply("embedding", (self, self._operand(indices)))

    def scatter_add(self, indices, num_rows: int):
        """A (num_rows, dim) table adding each row of self at its index (the gradient of embedding)."""
        return self._apply("scatter_add", (self, self._operand(indices)), {"num_rows": num_rows})

    def dropout_mask(self, shape, p: float, dtype="float32"):
        """With self an int64 scalar key: a `shape` mask of 0 (probability p) and 1 / (1 - p), seeded by the key."""
        return self._apply("dropout_mask", (self,), {"shape": tuple(as_size(d) for d in shape), "p": float(p),
                                                     "dtype": dtype})

    def attention(self, k, v, mask, scale: float):
        """softmax(self @ k^T * scale + mask) @ v as one op (ir/ops/attention.py); mask additive."""
        return self._apply("attention", (self, self._operand(k), self._operand(v), self._operand(mask)),
                           {"scale": float(scale)})

    def attention_grad(self, k, v, mask, out, dout, scale: float):
        """(dq, dk, dv) of attention packed as (3, ...): the gradient kernel autodiff emits."""
        operands = (self, *(self._operand(x) for x in (k, v, mask, out, dout)))
        return self._apply("attention_grad", operands, {"scale": float(scale)})

    def cache_write(self, new, positions):
        """This (batch, heads, length, dim) cache with `new` (batch, heads, n, dim) written at each sequence's
        position (`positions`: one integer per sequence) onwards."""
        return self._apply("cache_write", (self, self._operand(new), self._operand(positions)))

    def one_hot(self, num_classes: int, dtype="float32"):
        """These integer indices as one-hot rows along a new last axis."""
        return self._apply("one_hot", (self,), {"num_classes": num_classes, "dtype": dtype})

    # ---- shapes -------------------------------------------------------------------------------------------------
    def reshape(self, *shape):
        """reshape(2, 3) or reshape((2, 3)); one -1 is inferred from the element count."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = [as_size(dim) for dim in shape]
        inferred = [axis for axis, dim in enumerate(shape) if isinstance(dim, int) and dim == -1]
        if len(inferred) > 1:
            raise ShapeError(f"reshape to {shape}: at most one dimension may be -1")
        if inferred:
            known: Size = 1
            for axis, dim in enumerate(shape):
                known = known if axis == inferred[0] else known * dim
            quotient = None if isinstance(known, int) and known == 0 else exact_quotient(self.size, known)
            if quotient is None:
                raise ShapeError(f"cannot reshape shape {list(self.shape)} ({self.size} elements) to "
                                 f"[{', '.join(map(str, shape))}]")
            shape[inferred[0]] = quotient
        return self._apply("reshape", (self,), {"shape": tuple(shape)})

    def permute(self, *dims):
        """Reorder all axes: out.shape[i] = self.shape[dims[i]]."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if len(dims) != self.ndim:
            raise ShapeError(f"permute needs {self.ndim} axes for shape {list(self.shape)}, got {list(dims)}")
        perm = tuple(int(d) % self.ndim if -self.ndim <= d < self.ndim else d for d in dims)
        return self._apply("transpose", (self,), {"perm": perm})

    def transpose(self, dim0: int = -2, dim1: int = -1):
        """Swap two axes (the last two by default)."""
        first, second = self._one_axis(dim0), self._one_axis(dim1)
        perm = list(range(self.ndim))
        perm[first], perm[second] = perm[second], perm[first]
        return self._apply("transpose", (self,), {"perm": tuple(perm)})

    def broadcast_to(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._apply("broadcast_to", (self,), {"shape": tuple(as_size(d) for d in shape)})

    def sum_to(self, shape):
        """Sum a broadcast result back down to `shape`: the one un-broadcast every gradient rule shares.

        A (2, 3, 4) gradient summed to (3, 1) adds over axis 0 (absent in the target) and axis 2 (size 1 there)."""
        shape = tuple(shape)
        if same_shape(self.shape, shape):
            return self
        leading = self.ndim - len(shape)
        if leading < 0:
            raise ShapeError(f"cannot sum shape {list(self.shape)} to the larger rank of {list(shape)}")
        # Only a literal 1 in the target was broadcast: a symbolic size there is the gradient's own.
        axes = tuple(range(leading)) + tuple(
            leading + axis for axis, size in enumerate(shape) if is_one(size) and not is_one(self.shape[leading + axis]))
        summed = self._reduce("sum", axes, keepdims=True) if axes else self
        return summed if same_shape(summed.shape, shape) else summed.reshape(shape)

    def unslice(self, slices, shape):
        """Zeros of `shape` with self placed at normalised (start, stop, step) `slices` (the gradient of slicing)."""
        return self._apply("unslice", (self,), {"slices": tuple(slices), "shape": tuple(shape)})

    def __getitem__(self, index):
        """Basic indexing: integers, slices with positive steps, `None` and `...`. Emits `slice`, then a
        `reshape` when integers drop axes or None adds them."""
        items = index if isinstance(index, tuple) else (index,)
        ellipses = [position for position, item in enumerate(items) if item is Ellipsis]
        if len(ellipses) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if ellipses:
            at = ellipses[0]
            consumed = sum(item is not None for item in items) - 1
            items = items[:at] + (slice(None),) * (self.ndim - consumed) + items[at + 1:]
        if sum(item is not None for item in items) > self.ndim:
            raise IndexError(f"too many indices for a tensor of shape {list(self.shape)}: {index!r}")
        slices, result_shape, axis = [], [], 0
        for item in items:
            if item is None:
                result_shape.append(1)
                continue
            size = self.shape[axis]
            if isinstance(item, slice):
                start, stop, step = _slice_bounds(item, size)
                slices.append((start, stop, step))
                result_shape.append(slice_length(start, stop, step))
            elif isinstance(item, (int, np.integer, Dim)) and not isinstance(item, bool):
                if not (decide(-size, "<=", item) and decide(item, "<", size)):
                    raise IndexError(f"index {item} is out of range for axis {axis} of size {size}")
                position = item + size if decide(item, "<", 0) else as_size(item)
                slices.append((position, position + 1, 1))
            else:
                raise IndexError(f"unsupported index {item!r}: use integers, slices, None and ...; "
                                 f"gather rows with .embedding(indices)")
            axis += 1
        for size in self.shape[axis:]:
            slices.append((0, size, 1))
            result_shape.append(size)
        result = self
        if not all(same_shape(triple, (0, size, 1)) for triple, size in zip(slices, self.shape)):
            result = self._apply("slice", (self,), {"slices": tuple(slices)})
        if not same_shape(result_shape, result.shape):
            result = result._apply("reshape", (result,), {"shape": tuple(result_shape)})
        return result

    def concat(self, *others, axis: int = -1):
        """self and `others` joined along `axis`."""
        tensors = (self,) + tuple(self._operand(other) for other in others)
        return self._apply("concat", tensors, {"axis": self._one_axis(axis)})


def _slice_bounds(item: slice, size: Size) -> tuple[Size, Size, int]:
    """A Python slice of an axis of `size` as normalised (start, stop, step): 0 <= start <= stop <= size, as
    slice.indices gives them, for symbolic bounds and sizes too (`mask[:T, :T]` of a (64, 64) mask is (0, T, 1),
    under the guard T <= 64 a symbolic trace records)."""
    step = 1 if item.step is None else int(item.step)
    if step < 1:
        raise IndexError(f"slice steps must be positive, got {item.step}")
    if not any(isinstance(bound, Dim) for bound in (item.start, item.stop, size)):
        start, stop, step = item.indices(size)
        return start, max(stop, start), step

    def clamp(bound, default: Size) -> Size:
        if bound is None:
            return default
        bound = as_size(bound)
        if decide(bound, "<", 0):  # counted from the end
            bound = bound + size
        if decide(bound, "<", 0):
            return 0
        return size if decide(bound, ">", size) else bound

    start, stop = clamp(item.start, 0), clamp(item.stop, size)
    return start, (start if decide(stop, "<", start) else stop), step

