"""Attribute kinds: how each kind of op attribute is checked, and how it is written to and read from JSON.

An op declares its attributes as `{name: kind}`; the builder, the verifier and the JSON loader all check attributes
through these kinds, so a malformed attribute is caught in one place whatever its origin.
"""

from __future__ import annotations

import base64
import math

import numpy as np

from ..dims import Dim, substitute
from ..errors import ShapeError
from ..types import SHORT_DTYPE_NAMES, canonical_dtype

# A constant bigger than this is refused when read from a file (absurd-size guard); 2**28 elements is 1 GiB of f32.
MAX_CONSTANT_ELEMENTS = 1 << 28


class AttrKind:
    """One kind of attribute. `check` returns the canonical value or raises ShapeError.

    `carries_shape`: values of this kind restate shapes or extents of the op's input or output values (a reshape's
    target shape, a slice's bounds), so the same program run at other shapes (a data-parallel shard's smaller
    batch) holds other values in them; every other attribute means the same whatever the shapes.
    """

    name = "attr"
    carries_shape = False

    def check(self, value):
        raise NotImplementedError

    def to_json(self, value):
        return value

    def from_json(self, data):
        return self.check(data)

    def substitute(self, value, sizes):
        """The value with symbolic sizes (ir/dims.py) replaced by the numbers in `sizes` (kinds that carry a
        shape hold sizes; the rest are the same whatever the sizes)."""
        return value


class IntAttr(AttrKind):
    name = "int"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ShapeError(f"expected an integer, got {value!r}")
        return int(value)


class FloatAttr(AttrKind):
    name = "float"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ShapeError(f"expected a number, got {value!r}")
        return float(value)

    def to_json(self, value):
        # JSON has no inf/nan; keep them as strings Python's float() reads back.
        return value if math.isfinite(value) else repr(value)

    def from_json(self, data):
        if isinstance(data, str) and data in ("inf", "-inf", "nan"):
            return float(data)
        return self.check(data)


class BoolAttr(AttrKind):
    name = "bool"

    def check(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ShapeError(f"expected True or False, got {value!r}")
        return bool(value)


class IntTupleAttr(AttrKind):
    """A tuple of integers: axes or a permutation (a shape is a ShapeAttr)."""

    name = "ints"

    def check(self, value):
        if not isinstance(value, (tuple, list)):
            raise ShapeError(f"expected a tuple of integers, got {value!r}")
        return tuple(IntAttr().check(item) for item in value)

    def to_json(self, value):
        return list(value)


class SizeAttr(AttrKind):
    """One size: an integer, or a symbolic size (ir/dims.py). Graph files hold concrete sizes only (see
    ir/serialize.py), so JSON holds an integer."""

    name = "size"
    carries_shape = True

    def check(self, value):
        return value if isinstance(value, Dim) else INT.check(value)

    def from_json(self, data):  # JSON holds no symbolic size: it would read as a string, not an integer
        return INT.check(data)

    def substitute(self, value, sizes):
        return substitute(value, sizes)


class ShapeAttr(AttrKind):
    """A tuple of sizes that is the shape of a value."""

    name = "shape"
    carries_shape = True

    def check(self, value):
        if not isinstance(value, (tuple, list)):
            raise ShapeError(f"expected a tuple of sizes, got {value!r}")
        return tuple(SIZE.check(item) for item in value)

    def to_json(self, value):
        return list(value)

    def from_json(self, data):  # a tuple of integers: JSON holds no symbolic size
        return INTS.check(data)

    def substitute(self, value, sizes):
        return tuple(substitute(item, sizes) for item in value)


class SlicesAttr(AttrKind):
    """Per-axis (start, stop, step) triples, already normalised to non-negative starts/stops. They bound the
    extent of every axis, so they carry a shape."""

    name = "slices"
    carries_shape = True

    def check(self, value):
        if not isinstance(value, (tuple, list)):
            raise ShapeError(f"expected a tuple of (start, stop, step) triples, got {value!r}")
        triples = []
        for item in value:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise ShapeError(f"expected a (start, stop, step) triple, got {item!r}")
            start, stop, step = item
            triples.append((SIZE.check(start), SIZE.check(stop), INT.check(step)))
        return tuple(triples)

    def to_json(self, value):
        return [list(triple) for triple in value]

    def substitute(self, value, sizes):
        return tuple((substitute(start, sizes), substitute(stop, sizes), step) for start, stop, step in value)


class DtypeAttr(AttrKind):
    name = "dtype"

    def check(self, value):
        if value is None:  # np.dtype(None) is float64: a dtype left unset must not silently become one
            raise ShapeError("expected a dtype, got None")
        return canonical_dtype(value)


class ArrayAttr(AttrKind):
    """A NumPy array (the value of a constant). JSON holds dtype, shape and the raw little-endian bytes in base64,
    so -inf in a causal mask survives a round trip and nothing in the file is ever executed."""

    name = "array"

    def check(self, value):
        array = np.asarray(value)
        canonical_dtype(array.dtype)
        return array

    def to_json(self, value):
        array = np.array(value, order="C")  # not ascontiguousarray: it would make a 0-d constant 1-d
        little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return {
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "base64": base64.b64encode(little_endian.tobytes()).decode("ascii"),
        }

    def from_json(self, data):
        if not isinstance(data, dict) or set(data) != {"dtype", "shape", "base64"}:
            raise ShapeError("an array attribute must be an object with exactly dtype, shape and base64")
        if data["dtype"] not in SHORT_DTYPE_NAMES:
            raise ShapeError(f"array dtype {data['dtype']!r} is not one of {sorted(SHORT_DTYPE_NAMES)}")
        shape = IntTupleAttr().check(data["shape"])
        if any(dim < 0 for dim in shape):
            raise ShapeError(f"array shape {shape} has a negative dimension")
        size = 1
        for dim in shape:
            size *= dim
            if size > MAX_CONSTANT_ELEMENTS:
                raise ShapeError(f"array of shape {shape} is larger than the limit of {MAX_CONSTANT_ELEMENTS} elements")
        if not isinstance(data["base64"], str):
            raise ShapeError("array base64 field must be a string")
        dtype = np.dtype(data["dtype"]).newbyteorder("<")
        expected_chars = 4 * math.ceil(size * dtype.itemsize / 3)
        if len(data["base64"]) != expected_chars:
            raise ShapeError(f"array of shape {shape} and dtype {data['dtype']} needs {expected_chars} base64 "
                             f"characters, found {len(data['base64'])}")
        try:
            raw = base64.b64decode(data["base64"], validate=True)
        except ValueError as error:
            raise ShapeError(f"array data is not valid base64: {error}") from error
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        return array.astype(np.dtype(data["dtype"]))


INT = IntAttr()
SIZE = SizeAttr()
FLOAT = FloatAttr()
BOOL = BoolAttr()
INTS = IntTupleAttr()
SHAPE = ShapeAttr()
SLICES = SlicesAttr()
DTYPE = DtypeAttr()
ARRAY = ArrayAttr()


class ProgramAttr(AttrKind):
    """A fused elementwise program: ((op name, (operand, ...)), ...). Operand i < number of inputs names input i;
    larger operands name the result of instruction i - number of inputs."""

    name = "program"

    def check(self, value):
        if not isinstance(value, (tuple, list)) or not value:
            raise ShapeError(f"expected a non-empty tuple of (op, operands) instructions, got {value!r:.80}")
        program = []
        for item in value:
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
                raise ShapeError(f"expected an (op name, operands) instruction, got {item!r:.80}")
            program.append((item[0], IntTupleAttr().check(item[1])))
        return tuple(program)

    def to_json(self, value):
        return [[op, list(operands)] for op, operands in value]


PROGRAM = ProgramAttr()
