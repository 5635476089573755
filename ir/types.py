"""Tensor types of the IR: a static shape and a dtype, with the short spelling the text IR uses (`f32[2,8,64]`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .dims import Dim, Size, parse_size, same_shape, shape_size
from .errors import ShapeError

# The dtypes a graph may hold, with the short names the text IR prints.
SHORT_DTYPE_NAMES = {
    "float32": "f32",
    "float64": "f64",
    "int32": "i32",
    "int64": "i64",
    "bool": "bool",
}
DTYPE_BY_SHORT_NAME = {short: name for name, short in SHORT_DTYPE_NAMES.items()}
FLOAT_DTYPES = ("float32", "float64")
ITEMSIZES = {name: np.dtype(name).itemsize for name in SHORT_DTYPE_NAMES}
INTEGER_DTYPES = ("int32", "int64")


def canonical_dtype(dtype) -> str:
    """The IR's name for a NumPy dtype, or a clear error for one the IR does not hold.

    >>> canonical_dtype(np.float32), canonical_dtype("i64")
    ('float32', 'int64')
    """
    if isinstance(dtype, str) and dtype in SHORT_DTYPE_NAMES:  # already canonical: the common case, kept cheap
        return dtype
    if dtype is None:  # np.dtype(None) is float64: an unset dtype must not silently become one
        raise ShapeError("expected a dtype, got None")
    if isinstance(dtype, str) and dtype in DTYPE_BY_SHORT_NAME:
        return DTYPE_BY_SHORT_NAME[dtype]
    try:
        name = np.dtype(dtype).name
    except TypeError as error:
        raise ShapeError(f"unknown dtype {dtype!r}; expected one of {sorted(SHORT_DTYPE_NAMES)}") from error
    if name not in SHORT_DTYPE_NAMES:
        raise ShapeError(f"dtype {name} is not supported; expected one of {sorted(SHORT_DTYPE_NAMES)}")
    return name


@dataclass(frozen=True)
class TensorType:
    """The static type of an SSA value: shape (a tuple of non-negative ints, or symbolic sizes: ir/dims.py) and
    dtype name.

    >>> str(TensorType((2, 8), "float32"))
    'f32[2,8]'
    """

    shape: tuple[Size, ...]
    dtype: str
    itemsize: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        shape = tuple(self.shape)
        for dim in shape:
            if isinstance(dim, Dim):
                continue
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
                raise ShapeError(f"shape {shape} must hold non-negative integers")
        object.__setattr__(self, "shape", tuple(dim if isinstance(dim, Dim) else int(dim) for dim in shape))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        object.__setattr__(self, "itemsize", ITEMSIZES[self.dtype])

    @functools.cached_property
    def size(self) -> Size:
        """The element count: derived once, when first asked (types are made, and asked for their size, tens of
        thousands of times per compile; a symbolic one's is a product of polynomials)."""
        return shape_size(self.shape)

    @classmethod
    def of(cls, array) -> "TensorType":
        """The type of a NumPy array (or anything np.asarray accepts)."""
        array = np.asarray(array)
        return cls(array.shape, array.dtype)

    def same_as(self, other: "TensorType") -> bool:
        """Equal for every size of the symbols (f32[B*T] and f32[T*B] are; f32[B] and f32[4] are not, whatever B
        is): what the IR's checks ask, where `==` would guard on the example sizes (ir/dims.py)."""
        return self.dtype == other.dtype and same_shape(self.shape, other.shape)

    @property
    def is_symbolic(self) -> bool:
        return any(isinstance(dim, Dim) for dim in self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def __str__(self) -> str:
        return f"{SHORT_DTYPE_NAMES[self.dtype]}[{','.join(str(d) for d in self.shape)}]"

    @classmethod
    def parse(cls, text: str) -> "TensorType":
        """Inverse of str(): 'f32[2,8]' -> TensorType((2, 8), 'float32'); 'f32[B,T,64]' has symbolic sizes."""
        short, _, rest = text.partition("[")
        if not rest.endswith("]") or short not in DTYPE_BY_SHORT_NAME:
            raise ShapeError(f"cannot parse tensor type {text!r}; expected e.g. 'f32[2,8]'")
        dims = rest[:-1]
        shape = tuple(parse_size(d) for d in dims.split(",")) if dims else ()
        return cls(shape, DTYPE_BY_SHORT_NAME[short])
