"""The op registry: every op is declared once, here, with everything the system needs to know about it.

An `OpDef` carries
  - `infer(*input_types, **attrs) -> TensorType`: the result type from input types alone (no data);
  - `compute_into(out, *arrays, **attrs)`: the NumPy implementation, writing into a given output array (so the
    executor can run it over planned buffers), and/or `compute(*arrays, **attrs) -> np.ndarray`, an allocating
    one. Declare one and the other is derived; declare both only where they are the same NumPy call (a ufunc),
    so eager and compiled execution always compute bit-identical results;
  - `view`: whether compute returns a view of its first input, and when (a `ViewLayout`): a view needs no buffer;
  - `inplace`: compute_into may be given an `out` that is also one of its inputs (a single ufunc call);
  - `updates_first_input`: compute_into may be given its first input's own array as `out`, and then writes only
    what changes (a state update, such as a KV cache write): the memory plan computes it straight into the state;
  - `fusible`: may be an instruction of a fused elementwise program (ir/ops/fused.py): one float ufunc, in place;
  - `shape_attrs`: the names of its attributes that restate shapes of its values (kinds with `carries_shape`);
  - `kind`: its fusion class, after TVM's OpPatternKind;
  - `attrs`: the attribute names and their kinds (ir/ops/attrs.py), checked wherever a node is made or read;
  - `vjp`: the gradient rule, written with the op-building API so that the backward pass is IR too;
  - `cost(out_type, *input_types, **attrs) -> int`: floating-point operations, for reports (defaults by kind);
  - `scratch(out_type, *input_types, **attrs) -> int`: bytes of scratch one application takes from ir/scratch.py
    (none if absent), which the memory plan reserves; computed by the code that cuts the kernel's blocks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..dims import as_size
from ..errors import ShapeError
from ..types import TensorType
from .attrs import AttrKind


class OpKind(enum.Enum):
    """Fusion class of an op (TVM's OpPatternKind): what a fusion pass may merge it with."""

    ELEMENTWISE = "elementwise"  # same-shape map, one output element per input element
    BROADCAST = "broadcast"      # elementwise after broadcasting its inputs together
    INJECTIVE = "injective"      # each output element reads one input element (reshape, transpose, gather)
    REDUCTION = "reduction"      # reduces one or more axes
    MATMUL = "matmul"            # contraction; elementwise ops may fuse into its output
    OPAQUE = "opaque"            # not fused (composites with internal reductions, constants)


class ViewLayout(enum.Enum):
    """Whether an op's result is a view of its first input's memory (then it needs no buffer of its own).

    Falsy for COPY only, so `if op.view:` asks "may this op make a view?".
    """

    COPY = "copy"        # a new array, never a view
    STRIDED = "strided"  # always a view, possibly non-contiguous (transpose, slice, broadcast_to): reshaping it
                         # may copy
    RESHAPE = "reshape"  # the input's elements in C order under the result's shape: a view wherever NumPy can
                         # reshape without copying (a contiguous enough input), else a copy

    def __bool__(self) -> bool:
        return self is not ViewLayout.COPY


VARIADIC = -1


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: OpKind
    arity: int  # number of inputs; VARIADIC for one or more
    infer: Callable[..., TensorType]
    compute: Optional[Callable[..., Any]] = None
    compute_into: Optional[Callable[..., Any]] = None
    attrs: dict[str, AttrKind] = field(default_factory=dict)
    vjp: Optional[Callable[..., Any]] = None
    cost: Optional[Callable[..., int]] = None
    scratch: Optional[Callable[..., int]] = None
    view: ViewLayout = ViewLayout.COPY
    inplace: bool = False
    updates_first_input: bool = False
    fusible: bool = False
    doc: str = ""

    def flops(self, output_type: TensorType, input_types: list[TensorType], attrs: dict[str, Any]) -> int:
        """Floating-point operations of one application: the declared cost, else one per output element for
        elementwise ops, one per input element for reductions, none for data movement and constants."""
        if self.cost is not None:
            return as_size(self.cost(output_type, *input_types, **attrs))
        if self.kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST):
            return output_type.size
        if self.kind == OpKind.REDUCTION:
            return input_types[0].size
        return 0

    def scratch_bytes(self, output_type: TensorType, input_types: list[TensorType], attrs: dict[str, Any]) -> int:
        """Bytes of scratch one application asks ir/scratch.py for: the declared amount, else none."""
        return 0 if self.scratch is None else int(self.scratch(output_type, *input_types, **attrs))

    def accepts(self, count: int) -> bool:
        return count >= 1 if self.arity == VARIADIC else count == self.arity

    @property
    def arity_text(self) -> str:
        return "one or more" if self.arity == VARIADIC else str(self.arity)

    @property
    def shape_attrs(self) -> tuple[str, ...]:
        """Names of the attributes restating shapes or extents of its values (their kind `carries_shape`): the
        same program at other shapes, such as a data-parallel shard's batch, holds other values in them.

        >>> get_op("unslice").shape_attrs
        ('slices', 'shape')
        """
        return tuple(name for name, kind in self.attrs.items() if kind.carries_shape)

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Canonical attributes, or a ShapeError naming the missing, unknown or malformed one."""
        missing = sorted(set(self.attrs) - set(attrs))
        unknown = sorted(set(attrs) - set(self.attrs))
        if missing or unknown:
            raise ShapeError(f"{self.name}: expected attributes {sorted(self.attrs)}, "
                             f"missing {missing}, unknown {unknown}")
        checked = {}
        for name, kind in self.attrs.items():
            try:
                checked[name] = kind.check(attrs[name])
            except ShapeError as error:
                raise ShapeError(f"{self.name}: attribute {name!r}: {error}") from None
        return checked

    def infer_type(self, input_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        """Run the type rule, prefixing any error with the op's name."""
        if not self.accepts(len(input_types)):
            raise ShapeError(f"{self.name} expects {self.arity_text} inputs, got {len(input_types)}")
        try:
            return self.infer(*input_types, **attrs)
        except ShapeError as error:
            message = str(error)
            # Whole words only: a bare startswith(self.name) took "expected a floating-point input" for an `exp`
            # message (and "negative ..." would pass for `neg`), leaving the error without the op's name.
            named = message.startswith((f"{self.name}:", f"{self.name} "))
            raise ShapeError(message if named else f"{self.name}: {message}") from None

    def evaluate(self, arrays: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
        """Run the NumPy implementation into a new array laid out as a compiled schedule lays out this op's result
        (NumPy's 0-d scalars come back as 0-d arrays), so eager execution, constant folding and the schedule
        compute bit-identical values: BLAS and NumPy's reductions round differently for differently laid out
        operands, so the layout of every value a later op reads must agree too.

        - A view (transpose, slice, broadcast_to, a reshape NumPy makes without copying) stays NumPy's view, as
          the memory plan predicts it; a constant is its own array, as the schedule holds it.
        - Every other result is C-contiguous, the layout of the planned buffer the schedule writes it into. When
          the inputs are C-contiguous, `compute` is the schedule's very call (a ufunc, or the same NumPy
          function with `out=`) and NumPy gives C order already; otherwise (an exp of a transposed array would
          come back Fortran-ordered) the result is computed by `compute_into` into a C-ordered array, exactly
          as the schedule computes it.

        >>> get_op("exp").evaluate([np.ones((3, 2)).T], {}).flags.c_contiguous
        True
        """
        if self.compute is not None:
            if self.view or self.compute_into is None:
                return np.asarray(self.compute(*arrays, **attrs))
            if all(array.flags.c_contiguous for array in arrays):
                result = np.asarray(self.compute(*arrays, **attrs))
                if result.flags.c_contiguous:
                    return result
        result_type = self.infer(*[TensorType(array.shape, array.dtype) for array in arrays], **attrs)
        out = np.empty(result_type.shape, result_type.numpy_dtype)
        self.compute_into(out, *arrays, **attrs)
        return out

    def evaluate_into(self, out: np.ndarray, arrays: list[np.ndarray], attrs: dict[str, Any]) -> None:
        """Run the NumPy implementation writing into `out` (of the inferred type)."""
        if self.compute_into is not None:
            self.compute_into(out, *arrays, **attrs)
        else:
            np.copyto(out, self.compute(*arrays, **attrs))


OPS: dict[str, OpDef] = {}


def define_op(name: str, *, kind: OpKind, arity: int, infer: Callable[..., TensorType],
              compute: Optional[Callable[..., Any]] = None, compute_into: Optional[Callable[..., Any]] = None,
              attrs: Optional[dict[str, AttrKind]] = None, vjp: Optional[Callable[..., Any]] = None,
              cost: Optional[Callable[..., int]] = None, view: ViewLayout = ViewLayout.COPY,
              inplace: bool = False, updates_first_input: bool = False, fusible: bool = False,
              scratch: Optional[Callable[..., int]] = None, doc: str = "") -> OpDef:
    """Declare an op. Each name may be declared once.

    >>> define_op("my_negate", kind=OpKind.ELEMENTWISE, arity=1, infer=lambda x: x, **ufunc(np.negative))  # doctest: +SKIP
    """
    if name in OPS:
        raise ValueError(f"op {name!r} is declared twice")
    if compute is None and compute_into is None:
        raise ValueError(f"op {name!r} needs compute or compute_into")
    op = OpDef(name=name, kind=kind, arity=arity, infer=infer, compute=compute, compute_into=compute_into,
               attrs=dict(attrs or {}), vjp=vjp, cost=cost, view=ViewLayout(view), inplace=inplace,
               updates_first_input=updates_first_input, fusible=fusible, scratch=scratch, doc=doc)
    OPS[name] = op
    return op


def ufunc(function: np.ufunc, inplace: bool = True) -> dict[str, Any]:
    """compute, compute_into and inplace for an op that is one NumPy ufunc call (out may alias an input)."""
    return {"compute": function, "compute_into": lambda out, *arrays: function(*arrays, out=out),
            "inplace": inplace}


def get_op(name: str) -> OpDef:
    """The declaration of op `name`, or a ShapeError listing the known ops."""
    try:
        return OPS[name]
    except KeyError:
        raise ShapeError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None
