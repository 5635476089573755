"""graphgpt.Tensor: one class for both worlds. Outside tracing it holds a NumPy array and computes each op at once
(eager, define-by-run); inside `graphgpt.compile`'s trace the very same methods append graph nodes instead.

Eagerly, an op whose inputs need gradients is recorded on a tape (the result's `_creator`, shown to users as
torch's `grad_fn`); `loss.backward()` walks that tape with the same chain rule and gradient rules the autodiff pass
uses to emit the backward graph.

Every operator and op method comes from ir.TensorOps (defined once, in the class hierarchy, never patched in);
this file only says how to run an op eagerly and what a traced tensor refuses to do.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

from graphgpt.ir import ShapeError, TensorOps, TensorType, get_op
from graphgpt.ir.chain_rule import Application, backpropagate
from graphgpt.ir.types import canonical_dtype

from .tracing import TraceError, current_provenance, current_trace, grad_enabled, no_grad


# Numbers tape nodes in creation order; itertools.count's next() is atomic under the GIL, and numbers from
# several threads only need to be increasing within each thread's own tape.
_creation_counter = itertools.count()


class OpCount:
    """How many ops ran eagerly (recorded on the tape or not: backward() runs its rules unrecorded)."""

    def __init__(self):
        self.ops = 0


_op_count: contextvars.ContextVar[Optional[OpCount]] = contextvars.ContextVar("graphgpt_op_count", default=None)


@contextmanager
def counting_eager_ops() -> Iterator[OpCount]:
    """Count the ops this thread runs eagerly inside the block (for comparisons with a graph's node count).

    >>> with counting_eager_ops() as count:  # doctest: +SKIP
    ...     loss.backward()
    >>> count.ops                            # doctest: +SKIP
    """
    count = OpCount()
    token = _op_count.set(count)
    try:
        yield count
    finally:
        _op_count.reset(token)


class Tensor(TensorOps):
    """A tensor: eager NumPy data, or (during tracing) a symbolic value of the graph being built.

    The dtype rule is TinyTorch's: `Tensor(data)` with float data and no `dtype=` holds float32, whether the data
    is a Python float, a list of floats or a float64 NumPy array (`Tensor(np.random.randn(3, 4))` is f32[3,4]).
    `Tensor(data, dtype="float64")` (np.float64 and "f64" too) keeps float64, for gradient checks; integer and bool
    data keep their dtype, and so does a Tensor given to Tensor(); assigning `.data` keeps the array's dtype
    (Module.to converts parameters that way). Why: graphgpt's parameters are float32 and its users come from the
    TinyTorch course, whose Tensor makes float data float32; torch's rule (keep float64, promote a mixed op) would
    need the IR to promote silently, which it never does. An op mixing float32 and float64 is refused with a
    message saying how to make both one dtype (`x.astype(...)`, `Tensor(data, dtype=...)`).

    >>> x = Tensor(np.ones((2, 3)))
    >>> (x * 2 + 1).sum().data
    array(18., dtype=float32)
    """

    __slots__ = ("_data", "_type", "_traced", "_trace", "_creator", "requires_grad", "grad", "__weakref__")

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
            dtype = data.dtype if dtype is None else dtype
        # C order, as a compiled run lays out its inputs and buffers: a Fortran-ordered array would make eager
        # kernels (a reduction, BLAS) add in another order than the compiled graph. C-ordered data is not copied.
        array = np.asarray(data, dtype=None if dtype is None else canonical_dtype(dtype), order="C")
        if dtype is None and array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)  # the dtype rule in the class docstring
        self._hold(array, requires_grad)

    def _hold(self, array: np.ndarray, requires_grad: bool) -> None:
        canonical_dtype(array.dtype)  # refuses object, complex and other dtypes the IR does not hold
        self._data: Optional[np.ndarray] = array
        self._type = TensorType(array.shape, array.dtype)
        self._traced = None
        self._trace = None
        self._creator: Optional[Application] = None  # the tape entry that computed this tensor
        self.requires_grad = requires_grad
        self.grad: Optional[np.ndarray] = None

    @classmethod
    def _of_result(cls, array: np.ndarray) -> "Tensor":
        """An eager op's result, kept in the layout the op made it in (a view stays the view the compiled schedule
        also makes; every other result is already C-ordered, see OpDef.evaluate)."""
        tensor = cls.__new__(cls)
        tensor._hold(array, requires_grad=False)
        return tensor

    @classmethod
    def _symbolic(cls, value, trace) -> "Tensor":
        """A traced tensor standing for graph value `value` of `trace`."""
        tensor = cls.__new__(cls)
        tensor._data = None
        tensor._type = value.type
        tensor._traced = value
        tensor._trace = trace
        tensor._creator = None
        tensor.requires_grad = False
        tensor.grad = None
        return tensor

    @property
    def type(self) -> TensorType:
        return self._type

    @property
    def dtype(self) -> np.dtype:
        """A NumPy dtype, as an ndarray's (and TinyTorch's) is: it equals np.float32 and "float32" alike."""
        return np.dtype(self._type.dtype)

    @property
    def data(self) -> np.ndarray:
        if self._value_hidden():
            self._refuse("read .data of")
        return self._data

    @data.setter
    def data(self, array) -> None:
        array = np.asarray(array, order="C")  # as in __init__
        if self._value_hidden():
            self._refuse("assign .data of")
        self._data = array
        self._type = TensorType(array.shape, array.dtype)

    def numpy(self) -> np.ndarray:
        return self.data

    # ---- the two hooks TensorOps needs --------------------------------------------------------------------------
    def _apply(self, op: str, inputs: tuple, attrs: Optional[dict] = None) -> "Tensor":
        trace = current_trace()
        if trace is not None:
            return Tensor._symbolic(trace.emit(op, inputs, attrs or {}), trace)
        for tensor in inputs:
            if tensor._traced is not None:
                raise TraceError(f"a traced tensor ({tensor._traced.label}) escaped its trace and was used in "
                                 f"eager code; return it from the traced function instead")
        op_def = get_op(op)
        try:
            checked = op_def.check_attrs(attrs or {})
            op_def.infer_type([tensor._type for tensor in inputs], checked)
        except ShapeError as error:
            raise ShapeError(f"{error}\n  at {current_provenance().describe()}") from None
        result = Tensor._of_result(op_def.evaluate([tensor._data for tensor in inputs], checked))
        count = _op_count.get()
        if count is not None:
            count.ops += 1
        if result._type.is_float and grad_enabled() and any(tensor.requires_grad for tensor in inputs):
            result.requires_grad = True
            # origin = creation number, so backward() walks the tape in the order the ops ran (see _tape)
            result._creator = Application(op, checked, tuple(inputs), result, origin=next(_creation_counter))
        return result

    def _lift(self, array: np.ndarray) -> "Tensor":
        # An operand array keeps its dtype (TensorOps._operand), as graph constants do when traced.
        return Tensor(array, dtype=array.dtype)

    # ---- eager backward ------------------------------------------------------------------------------------------
    def backward(self, gradient=None) -> None:
        """Fill `.grad` of every leaf tensor that requires grad (the model's Parameters) with d self / d leaf,
        adding to what is there (call zero_grad between steps; the tape is kept, so a second backward adds again).

        As torch's: without `gradient`, self must have exactly one element (shape (), (1,), (1, 1)...) and its
        gradient is 1; with it (an array or Tensor of self's shape, cast to self's dtype), the vector-Jacobian
        product gradient . d self / d leaf is what lands in `.grad`."""
        if self._value_hidden():
            self._refuse("call .backward() on", advice=(
                "graphgpt.compile generates the backward pass itself: return the loss from the traced function "
                "and compile a training step (graphgpt.compile(model, x, targets, loss=..., optimizer=...)), or "
                "call .backward() in eager code, outside compile"))
        if not self._type.is_float:
            raise ShapeError(f"backward() needs a float tensor, got {self._type}")
        seed = self._backward_seed(gradient)
        if not self.requires_grad:
            raise RuntimeError("backward(): the loss does not depend on any tensor that requires grad")
        tape, leaves = self._tape()
        with no_grad():
            gradients = backpropagate(tape, self, seed, leaves, key=id)
        for leaf in leaves:
            gradient = gradients.get(id(leaf))
            if gradient is not None:
                leaf.grad = gradient._data.copy() if leaf.grad is None else leaf.grad + gradient._data

    def _backward_seed(self, gradient) -> "Tensor":
        """d self / d self for backward(): ones for a one-element tensor, else the caller's `gradient`."""
        shape, dtype = self._type.shape, self._type.dtype
        if gradient is None:
            if self._type.size != 1:
                raise ShapeError(f"backward() of a non-scalar {self._type} needs gradient= of shape {shape} "
                                 f"(d loss / d this tensor), or reduce it to one element first (.sum(), .mean())")
            return Tensor(np.ones(shape, dtype), dtype=dtype)
        seed = np.asarray(gradient.data if isinstance(gradient, Tensor) else gradient, dtype=dtype)
        if seed.shape != shape:
            raise ShapeError(f"backward(gradient): gradient has shape {seed.shape}, but the tensor {self._type} has "
                             f"shape {shape}; they must be equal")
        return Tensor(seed, dtype=dtype)

    @property
    def grad_fn(self) -> Optional["GradFn"]:
        """What made this tensor on the tape, as torch's grad_fn: None for a leaf (a Tensor you made, a Parameter)
        and for a result no tensor requiring grad flowed into; else a GradFn of the op's own class, printed like
        <MatmulBackward>. `_grad_fn` is the same, under the TinyTorch course's name."""
        return None if self._creator is None else grad_fn_class(self._creator.op)(self._creator)

    _grad_fn = grad_fn

    def _tape(self) -> tuple[list[Application], list["Tensor"]]:
        """The tape entries self depends on, in the order they ran, and the leaves that require grad.

        Creation order (not merely some topological order) makes the walk visit nodes exactly as the autodiff
        pass visits the traced graph, so gradients of a value used several times are summed in the same order and
        eager and compiled float32 results agree bit for bit."""
        order: list[Application] = []
        leaves: list[Tensor] = []
        seen: set[int] = set()
        stack = [self]
        while stack:  # iterative: a deep model must not hit Python's recursion limit
            tensor = stack.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if tensor._creator is None:
                if tensor.requires_grad:
                    leaves.append(tensor)
                continue
            order.append(tensor._creator)
            stack.extend(parent for parent in tensor._creator.inputs if parent.requires_grad)
        order.sort(key=lambda application: application.origin)
        return order, leaves

    # ---- what a traced value cannot do --------------------------------------------------------------------------
    def _value_hidden(self) -> bool:
        """Whether Python must not see this tensor's value now: a traced value (not computed yet), or, while a
        trace is active in this thread, a parameter or buffer of the model being traced (the graph reads its
        value at every run; a value Python read now would be frozen into the graph and go stale)."""
        if self._traced is not None:
            return True
        trace = current_trace()
        return trace is not None and trace.parameter_name(self) is not None

    def _refuse(self, what: str, advice: Optional[str] = None):
        """Raise TraceError for `what` (an action on a hidden value); `advice` replaces the default hint."""
        provenance = current_provenance()
        where = f"{provenance.filename}:{provenance.lineno}" if provenance.filename else "your code"
        if self._traced is None:  # a parameter of the model being traced
            name = current_trace().parameter_name(self)
            raise TraceError(
                f"cannot {what} parameter {name!r} ({self._type}) at {where} while graphgpt.compile traces the "
                f"model: the compiled graph reads its value at every run, so a value read now would be frozen "
                f"into the graph and go stale when the parameter changes (training, load_state_dict). "
                + (advice or "Use tensor ops on it instead (self.w.tanh(), (self.w.sum() > 0).where(a, b)), or "
                             "run the model eagerly") + ".")
        raise TraceError(
            f"cannot {what} a traced tensor ({self._traced.label}: {self._type}) at {where}: its value is not "
            f"known while graphgpt.compile traces the model. "
            + (advice or "A static graph cannot depend on data through Python control flow; use tensor ops "
                         "instead (for example mask.where(a, b) for an if/else), or run the model eagerly") + ".")

    def __bool__(self) -> bool:
        if self._value_hidden():
            self._refuse("use in Python control flow (bool())")
        return bool(self._data)

    def __float__(self) -> float:
        if self._value_hidden():
            self._refuse("convert to float")
        return float(self._data)

    def __int__(self) -> int:
        if self._value_hidden():
            self._refuse("convert to int")
        return int(self._data)

    def __index__(self) -> int:
        if self._value_hidden():
            self._refuse("use as an index")
        return self._data.__index__()

    def item(self):
        if self._value_hidden():
            self._refuse("call .item() on")
        return self._data.item()

    def __array__(self, dtype=None, copy=None):
        if self._value_hidden():
            self._refuse("convert to a NumPy array")
        return self._data if dtype is None else self._data.astype(dtype)

    def __iter__(self):
        if self._value_hidden():
            self._refuse("iterate over")
        return (Tensor(row, dtype=self._type.dtype) for row in self._data)

    def __repr__(self) -> str:
        if self._traced is not None:
            return f"Tensor(traced {self._traced.label}: {self._type})"
        return f"Tensor({np.array2string(self._data, threshold=20)}, dtype={self._type.dtype})"


class GradFn:
    """The tape entry that made a tensor, shown as torch shows a grad_fn: `name()` ('MatmulBackward'), the `op`,
    and `next_functions`, one (grad_fn, 0) pair per input as in torch: the input's GradFn, an AccumulateGrad for
    a leaf that requires grad, None for an input without gradient. A view of Tensor._creator, not a second tape."""

    __slots__ = ("_application",)

    def __init__(self, application: Application):
        self._application = application

    @property
    def op(self) -> str:
        return self._application.op

    def name(self) -> str:
        return type(self).__name__

    @property
    def next_functions(self) -> tuple:
        return tuple((_grad_fn_of(tensor), 0) for tensor in self._application.inputs)

    def __eq__(self, other) -> bool:
        return isinstance(other, GradFn) and other._application is self._application

    def __hash__(self) -> int:
        return id(self._application)

    def __repr__(self) -> str:
        return f"<{self.name()}>"


class AccumulateGrad:
    """Where a gradient ends: a leaf tensor that requires grad (`variable`), as torch's next_functions show it."""

    __slots__ = ("variable",)
    next_functions = ()

    def __init__(self, variable: Tensor):
        self.variable = variable

    def name(self) -> str:
        return "AccumulateGrad"

    def __repr__(self) -> str:
        return "<AccumulateGrad>"


@functools.lru_cache(maxsize=None)  # one class per op name: made once, shared by every thread
def grad_fn_class(op: str) -> type:
    """The GradFn subclass for op `op`, named as torch and the course name theirs: 'embedding' -> EmbeddingBackward
    (so `type(t.grad_fn).__name__` reads as it does there)."""
    name = "".join(part.capitalize() for part in op.split("_")) + "Backward"
    return type(name, (GradFn,), {"__slots__": (), "__doc__": f"The gradient function of {op!r}."})


def _grad_fn_of(tensor: Tensor):
    if tensor.grad_fn is not None:
        return tensor.grad_fn
    return AccumulateGrad(tensor) if tensor.requires_grad else None


class Parameter(Tensor):
    """A Tensor that a Module registers as one of its trainable parameters."""

    __slots__ = ()

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)


def as_tensor(data) -> Tensor:
    """A Tensor for `data` (returned as is when it already is one)."""
    return data if isinstance(data, Tensor) else Tensor(data)
