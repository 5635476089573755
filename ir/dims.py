"""Symbolic sizes: a dimension that is not one number (the batch B, the sequence length T) but an integer
polynomial over named symbols (B, B*T, 2*T+1), so one traced graph serves every size and its text IR prints
`f32[B,T,64]`.

A `Dim` never stands for a plain number: arithmetic whose result has no symbol left gives a Python int. Every
symbol is a size of at least 1. A question about sizes (`T <= 64`, `B == 1`) is answered without guessing:

  - when it holds for every size (`0 <= T`, `B*T == T*B`) or for none, that is the answer;
  - otherwise, while a `ShapeEnv` (ir/shape_env.py) is active (a symbolic trace and the passes over its graph),
    the answer is the one the example sizes give, recorded as a *guard* (`T <= 64`, at the user's source line):
    the graph is only ever used for sizes that pass every guard, and other sizes get a graph of their own;
  - outside a ShapeEnv, it is refused with a SymbolicShapeError naming the question.

Code of the IR and of the passes must not need a number for a symbol: `int(T)` there is refused. In the user's
model code (`np.arange(int(T))`), `int(T)` specialises: it returns the example size and guards `T == 16`, as
torch.compile's dynamic shapes do.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import re
import sys
from contextvars import ContextVar
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Union

from .errors import ShapeError

Monomial = tuple[str, ...]  # symbol names, sorted, a name repeated for a power: ("B", "T"), ("T", "T")
Size = Union[int, "Dim"]


class SymbolicShapeError(ShapeError):
    """A question about symbolic sizes that has no one answer for every size, asked where none may be guessed."""


COMPARISONS: Mapping[str, Callable[[int, int], bool]] = MappingProxyType({
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge})
NEGATED: Mapping[str, str] = MappingProxyType({"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"})


class Dim:
    """An integer polynomial over symbols: `terms` maps each monomial to its non-zero coefficient."""

    __slots__ = ("terms", "key", "_hash")

    def __init__(self, terms: Mapping[Monomial, int]):
        self.terms = dict(sorted(terms.items(), key=lambda item: (-len(item[0]), item[0])))
        self.key = tuple(self.terms.items())  # what it is, as plain tuples: equal keys, equal polynomials
        self._hash = hash(self.key)

    @staticmethod
    def symbol(name: str) -> "Dim":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ShapeError(f"a symbol name must be an identifier, got {name!r}")
        return Dim({(name,): 1})

    @staticmethod
    def _make(terms: Mapping[Monomial, int]) -> Size:
        kept = {monomial: coefficient for monomial, coefficient in terms.items() if coefficient}
        if not any(kept):  # no symbol left: a plain number
            return kept.get((), 0)
        return Dim(kept)

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(name for monomial in self.terms for name in monomial)

    # ---- arithmetic ---------------------------------------------------------------------------------------------
    def __add__(self, other) -> Size:
        terms = dict(self.terms)
        for monomial, coefficient in _terms(other).items():
            terms[monomial] = terms.get(monomial, 0) + coefficient
        return Dim._make(terms)

    __radd__ = __add__

    def __neg__(self) -> Size:
        return Dim._make({monomial: -coefficient for monomial, coefficient in self.terms.items()})

    def __sub__(self, other) -> Size:
        return self + (-as_size(other))

    def __rsub__(self, other) -> Size:
        return as_size(other) + (-self)

    def __mul__(self, other) -> Size:
        terms: dict[Monomial, int] = {}
        for left, a in self.terms.items():
            for right, b in _terms(other).items():
                monomial = tuple(sorted(left + right))
                terms[monomial] = terms.get(monomial, 0) + a * b
        return Dim._make(terms)

    __rmul__ = __mul__

    def __floordiv__(self, other) -> Size:
        quotient = exact_quotient(self, other)
        if quotient is None:
            raise SymbolicShapeError(f"{self} // {other} is not a whole polynomial for every size")
        return quotient

    def __rfloordiv__(self, other) -> Size:
        raise SymbolicShapeError(f"{other} // {self} has no one value for every size of {self}")

    def __truediv__(self, other):
        raise SymbolicShapeError(f"{self} / {other} is not a size; a function needing a number of a symbolic "
                                 f"size (np.arange) can be given int(size), the example's, under a guard")

    __rtruediv__ = __truediv__

    def __mod__(self, other) -> Size:
        if exact_quotient(self, other) is not None:
            return 0
        raise SymbolicShapeError(f"{self} % {other} has no one value for every size")

    # ---- questions ----------------------------------------------------------------------------------------------
    def _compare(self, op: str, other) -> bool:
        return decide(self, op, other)

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Dim, int)) or isinstance(other, bool):
            return NotImplemented
        return self._compare("==", other)

    def __ne__(self, other) -> bool:
        if not isinstance(other, (Dim, int)) or isinstance(other, bool):
            return NotImplemented
        return self._compare("!=", other)

    def __lt__(self, other): return self._compare("<", other)
    def __le__(self, other): return self._compare("<=", other)
    def __gt__(self, other): return self._compare(">", other)
    def __ge__(self, other): return self._compare(">=", other)

    def __bool__(self) -> bool:
        return self._compare("!=", 0)

    def __hash__(self) -> int:
        return self._hash

    def __index__(self) -> int:
        return _specialise(self)

    __int__ = __index__

    def __float__(self) -> float:
        return float(_specialise(self))

    # ---- values -------------------------------------------------------------------------------------------------
    def substitute(self, sizes: Mapping[str, int]) -> Size:
        """This polynomial with the symbols of `sizes` replaced by their numbers."""
        total: Size = 0
        for monomial, coefficient in self.terms.items():
            term: Size = coefficient
            for name in monomial:
                term = term * (sizes[name] if name in sizes else Dim.symbol(name))
            total = total + term
        return total

    def bounds(self) -> tuple[Optional[int], Optional[int]]:
        """(lowest, highest) value over every size of at least 1 (None: unbounded). Every monomial is at least 1
        and grows without bound, so a polynomial whose symbolic coefficients are all positive is smallest with
        every symbol at 1."""
        constant = self.terms.get((), 0)
        symbolic = [coefficient for monomial, coefficient in self.terms.items() if monomial]
        at_ones = constant + sum(symbolic)
        return (at_ones if min(symbolic) > 0 else None, at_ones if max(symbolic) < 0 else None)

    def __str__(self) -> str:
        text = ""
        for monomial, coefficient in self.terms.items():
            factors = [str(abs(coefficient))] if abs(coefficient) != 1 or not monomial else []
            factors += list(monomial)
            sign = "-" if coefficient < 0 else ("+" if text else "")
            text += sign + "*".join(factors)
        return text

    def __repr__(self) -> str:  # as printed in a shape: [B, T, 64]
        return str(self)

    def __format__(self, spec: str) -> str:
        """Its text, aligned as a string would be; a number's format (`,`, `.1f`) has no meaning for it."""
        try:
            return format(str(self), spec)
        except ValueError:
            return str(self)


def _terms(value) -> dict[Monomial, int]:
    value = as_size(value)
    return value.terms if isinstance(value, Dim) else ({(): value} if value else {})


def as_size(value) -> Size:
    """An int or a Dim from anything that is one (NumPy integers included); a clear error otherwise."""
    if isinstance(value, Dim):
        return value
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise ShapeError(f"expected a size (an integer or a symbolic size), got {value!r}")
    return operator.index(value)


def is_symbolic(value) -> bool:
    return isinstance(value, Dim)


class _ShapeKey:
    """A shape compared and hashed by what it is (Dim.key), never by Dim.__eq__, which may ask for a guard."""

    __slots__ = ("shape", "key")

    def __init__(self, shape: tuple):
        self.shape = shape
        self.key = tuple(dim.key if isinstance(dim, Dim) else dim for dim in shape)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return self.key == other.key


@functools.lru_cache(maxsize=4096)
def _symbolic_product(shape: _ShapeKey) -> Size:
    return math.prod(shape.shape)


def shape_size(shape: tuple) -> Size:
    """The element count of a shape: a polynomial for a symbolic one, remembered, since a compile makes tens of
    thousands of types over a few shapes and multiplying polynomials is slow."""
    if any(isinstance(dim, Dim) for dim in shape):
        return _symbolic_product(_ShapeKey(shape))
    return math.prod(shape)


def has_symbols(value) -> bool:
    """Whether a size, or a (nested) tuple or list of them such as a slice's bounds, holds a symbolic size."""
    if isinstance(value, (tuple, list)):
        return any(has_symbols(item) for item in value)
    return isinstance(value, Dim)


def is_one(value) -> bool:
    """Whether a size is the literal 1 (a broadcast axis): a symbol is never taken for 1, though it may be 1,
    since a rule written for a symbol broadcasting against 1 holds when it is 1 too."""
    return not isinstance(value, Dim) and value == 1


def slice_length(start: Size, stop: Size, step: int) -> Size:
    """How many elements the slice start:stop:step (0 <= start, stop; step >= 1) takes: none when stop <= start."""
    length = stop - start
    if not isinstance(length, Dim):
        return len(range(0, length, step))
    if step == 1 and decide(stop, ">=", start):
        return length
    raise SymbolicShapeError(f"a slice {start}:{stop}:{step} has no polynomial length for every size; slice with "
                             f"step 1 within the axis, or use static sizes")


def same_size(a, b) -> bool:
    """Whether two sizes are equal for every size of their symbols: B*T and T*B are; B and 1 are not, though B
    may be 1. Code of the IR asks this, not `==` (which would guard on the example sizes)."""
    if isinstance(a, Dim) or isinstance(b, Dim):  # a polynomial always has a symbol: never a number
        return isinstance(a, Dim) and isinstance(b, Dim) and a.key == b.key
    return as_size(a) == as_size(b)


def same_shape(a, b) -> bool:
    return len(a) == len(b) and all(map(same_size, a, b))


def exact_quotient(numerator, denominator) -> Optional[Size]:
    """numerator / denominator when it is a polynomial for every size (B*T*64 / (B*4) = 16*T), else None."""
    numerator, denominator = as_size(numerator), as_size(denominator)
    if not isinstance(denominator, Dim):
        if denominator == 0:
            return None
        if not isinstance(numerator, Dim):
            return numerator // denominator if numerator % denominator == 0 else None
        if any(coefficient % denominator for coefficient in numerator.terms.values()):
            return None
        return Dim._make({m: c // denominator for m, c in numerator.terms.items()})
    if len(denominator.terms) != 1 or not isinstance(numerator, Dim):
        return None
    (divisor, scale), = denominator.terms.items()
    terms: dict[Monomial, int] = {}
    for monomial, coefficient in numerator.terms.items():
        remaining = list(monomial)
        for name in divisor:
            if name not in remaining:
                return None
            remaining.remove(name)
        if coefficient % scale:
            return None
        terms[tuple(remaining)] = coefficient // scale
    return Dim._make(terms)


def substitute(value, sizes: Mapping[str, int]) -> Size:
    return value.substitute(sizes) if isinstance(value, Dim) else value


_SIZE_PATTERN = re.compile(r"([+-]?)([0-9A-Za-z_*]+)")


def parse_size(text: str) -> Size:
    """Inverse of str(): '64' -> 64, 'B*T' -> B*T, '2*T-1' -> 2*T-1. Nothing is evaluated: a strict grammar of
    terms joined by + and -, each a product of integers and identifiers."""
    text = text.strip()
    position, total = 0, 0
    if not text:
        raise ShapeError("expected a size, got ''")
    while position < len(text):
        match = _SIZE_PATTERN.match(text, position)
        if match is None or (position and not match.group(1)):
            raise ShapeError(f"cannot read the size {text!r}; expected e.g. 64, B, B*T or 2*T+1")
        term: Size = -1 if match.group(1) == "-" else 1
        for factor in match.group(2).split("*"):
            if factor.isdigit():
                term = term * int(factor)
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", factor):
                term = term * Dim.symbol(factor)
            else:
                raise ShapeError(f"cannot read the size {text!r}; expected e.g. 64, B, B*T or 2*T+1")
        total = total + term
        position = match.end()
    return total


# ---- the active shape env (ir/shape_env.py): who answers the questions asked in this thread -----------------

# A ShapeEnv, or None outside a symbolic compile. Set by ir/shape_env.py's `shape_env`; read here, duck-typed
# (hints, answer, allows_specialising), so that this module does not import the one that imports it.
ACTIVE_SHAPE_ENV: ContextVar = ContextVar("graphgpt_shape_env", default=None)


def active_shape_env():
    """The ShapeEnv answering this thread's size questions (ir/shape_env.py), or None."""
    return ACTIVE_SHAPE_ENV.get()


def example_value(size: Size) -> int:
    """A size's number at the example sizes, for heuristics that choose only how fast something runs, never what
    it computes (whether a chain is big enough to fuse): no guard is needed, either choice is right."""
    if not isinstance(size, Dim):
        return size
    env = ACTIVE_SHAPE_ENV.get()
    if env is None:
        raise SymbolicShapeError(f"the symbolic size {size} has no example value outside a symbolic compile")
    return substitute(size, env.hints)


def decide(left, op: str, right) -> bool:
    """The answer to `left op right` for every size, or a guarded one (see the module docstring)."""
    left, right = as_size(left), as_size(right)
    if isinstance(left, Dim) and isinstance(right, Dim) and left.key == right.key:
        return COMPARISONS[op](0, 0)
    difference = left - right
    if not isinstance(difference, Dim):
        return COMPARISONS[op](difference, 0)
    low, high = difference.bounds()
    for answer_for_all in _answers_from_bounds(op, low, high):
        return answer_for_all
    env = ACTIVE_SHAPE_ENV.get()
    if env is None:
        raise SymbolicShapeError(f"cannot decide {left} {op} {right}: it holds for some sizes of "
                                 f"{', '.join(sorted(difference.symbols))} and not for others")
    return env.answer(left, op, right)


def _answers_from_bounds(op: str, low: Optional[int], high: Optional[int]):
    """The answer to `difference op 0` when the bounds of the difference settle it (yields nothing if not)."""
    positive, negative = low is not None and low > 0, high is not None and high < 0
    non_negative, non_positive = low is not None and low >= 0, high is not None and high <= 0
    settled = {
        "==": False if positive or negative else None,
        "!=": True if positive or negative else None,
        "<": True if negative else (False if non_negative else None),
        "<=": True if non_positive else (False if positive else None),
        ">": True if positive else (False if non_positive else None),
        ">=": True if non_negative else (False if negative else None),
    }[op]
    if settled is not None:
        yield settled


_IR_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_DIRS = (_IR_DIR + os.sep, os.path.join(os.path.dirname(_IR_DIR), "passes") + os.sep)
_NUMPY_DIR = os.path.dirname(os.path.abspath(__import__("numpy").__file__)) + os.sep


def _asking_frame():
    """The frame of the code that asked for a number: past this module and NumPy's Python functions
    (np.prod(shape) asks from inside NumPy on behalf of its caller)."""
    frame = sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((_NUMPY_DIR, __file__)):
        frame = frame.f_back
    return frame


def _specialise(dim: Dim) -> int:
    """int(dim): in model code, the example size under a guard; in the IR and passes, refused."""
    env = ACTIVE_SHAPE_ENV.get()
    frame = _asking_frame()
    caller = os.path.abspath(frame.f_code.co_filename) if frame is not None else ""
    if env is None or caller.startswith(_LIBRARY_DIRS) or not env.allows_specialising(caller):
        where = f" ({os.path.basename(caller)}:{frame.f_lineno})" if frame is not None else ""
        raise SymbolicShapeError(f"the symbolic size {dim} has no one number, and this code needs one{where}")
    value = substitute(dim, env.hints)
    env.answer(dim, "==", value)
    return value
