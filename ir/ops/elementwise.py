"""Elementwise ops: unary maps, broadcasting binary arithmetic, comparisons, where, dtype cast and GELU.

Ops that differ only in their NumPy function are declared from one table row each, so each op still has exactly
one declaration and adding one is one line.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..types import TensorType
from . import attrs as A
from .registry import OpKind, define_op, ufunc
from .rules import broadcast_shapes, broadcast_types, require_float, same_dtype


def _float_unary(x: TensorType) -> TensorType:
    require_float(x)
    return x


def _numeric_unary(x: TensorType) -> TensorType:
    if x.dtype == "bool":
        raise ShapeError(f"expected a numeric input, got {x}")
    return x


# Gradient rules are called as vjp(g, out, *inputs, **attrs) and return, per input, a zero-argument function giving
# that input's gradient (or None where there is none); see ir/chain_rule.py.

# name -> (NumPy function, type rule, gradient rule)
UNARY_OPS = {
    "neg": (np.negative, _numeric_unary, lambda g, out, x: (lambda: -g,)),
    "exp": (np.exp, _float_unary, lambda g, out, x: (lambda: g * out,)),
    "log": (np.log, _float_unary, lambda g, out, x: (lambda: g / x,)),
    "tanh": (np.tanh, _float_unary, lambda g, out, x: (lambda: g * (1.0 - out * out),)),
    "sqrt": (np.sqrt, _float_unary, lambda g, out, x: (lambda: g / (out * 2.0),)),
}
for _name, (_function, _infer, _vjp) in UNARY_OPS.items():
    define_op(_name, kind=OpKind.ELEMENTWISE, arity=1, infer=_infer, vjp=_vjp, **ufunc(_function), fusible=True,
              doc=f"elementwise {_function.__name__}")


def _numeric_binary(a: TensorType, b: TensorType) -> TensorType:
    result = broadcast_types(a, b)
    if result.dtype == "bool":
        raise ShapeError(f"expected numeric inputs, got {a} and {b}")
    return result


def _float_binary(a: TensorType, b: TensorType) -> TensorType:
    result = broadcast_types(a, b)
    require_float(result)
    return result


def _maximum_vjp(g, out, a, b):
    """torch's convention: the larger input takes the gradient, a tie splits it in halves (the sum stays g), and
    where either input is NaN (so is the result) neither is smaller, so both take all of it."""
    def tie_split():
        return a.equal(b).where(g * 0.5, g)
    return (lambda: (a < b).where(0.0, tie_split()).sum_to(a.shape),
            lambda: (a > b).where(0.0, tie_split()).sum_to(b.shape))


def _pow_vjp(g, out, a, b):
    """d/da a**b = b a**(b-1) and d/db a**b = a**b log(a), with torch's conventions where these are 0 * inf:

    - where b == 0, a**b is the constant 1, so its gradient for a is 0 (even at a = 0, where b a**(b-1) is
      0 * inf = NaN);
    - where a == 0 and b >= 0, the gradient for b is 0 (a**b log(a) would be 1 * -inf or 0 * -inf), as torch's
      pow_backward_exponent takes it.

    The gradient g stays outside the first mask and inside the second, as in torch, so a NaN or infinite g
    spreads the same way."""
    def gradient_base():
        return b.equal(0.0).where(0.0, g * (b * a ** (b - 1.0))).sum_to(a.shape)

    def gradient_exponent():
        constant_at_zero = (b >= 0.0).where(a.equal(0.0), False)  # a == 0 and b >= 0
        return (g * constant_at_zero.where(0.0, out * a.log())).sum_to(b.shape)

    return (gradient_base, gradient_exponent)


# Each gradient is summed back to its input's shape (sum_to), undoing the broadcast of the forward op.
BINARY_OPS = {
    "add": (np.add, _numeric_binary,
            lambda g, out, a, b: (lambda: g.sum_to(a.shape), lambda: g.sum_to(b.shape))),
    "sub": (np.subtract, _numeric_binary,
            lambda g, out, a, b: (lambda: g.sum_to(a.shape), lambda: (-g).sum_to(b.shape))),
    "mul": (np.multiply, _numeric_binary,
            lambda g, out, a, b: (lambda: (g * b).sum_to(a.shape), lambda: (g * a).sum_to(b.shape))),
    # true division: integer inputs would silently become float64
    "div": (np.divide, _float_binary,
            lambda g, out, a, b: (lambda: (g / b).sum_to(a.shape), lambda: (-g * out / b).sum_to(b.shape))),
    "pow": (np.power, _float_binary, _pow_vjp),
    "maximum": (np.maximum, _numeric_binary, _maximum_vjp),
}
for _name, (_function, _infer, _vjp) in BINARY_OPS.items():
    define_op(_name, kind=OpKind.BROADCAST, arity=2, infer=_infer, vjp=_vjp, **ufunc(_function), fusible=True,
              doc=f"broadcasting elementwise {_function.__name__}")


def _compare(a: TensorType, b: TensorType) -> TensorType:
    return TensorType(broadcast_types(a, b).shape, "bool")


COMPARE_OPS = {
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "equal": np.equal,
    "not_equal": np.not_equal,
}
for _name, _function in COMPARE_OPS.items():
    # A bool result carries no gradient back to its inputs.
    define_op(_name, kind=OpKind.BROADCAST, arity=2, infer=_compare, **ufunc(_function, inplace=False),
              vjp=lambda g, out, a, b: (None, None),
              doc=f"broadcasting comparison {_function.__name__}, giving bool")


def _infer_where(condition: TensorType, a: TensorType, b: TensorType) -> TensorType:
    if condition.dtype != "bool":
        raise ShapeError(f"condition must be bool, got {condition}")
    return TensorType(broadcast_shapes(condition.shape, a.shape, b.shape), same_dtype(a, b))


def _where_into(out, condition, a, b):
    np.copyto(out, b)
    np.copyto(out, a, where=condition)


define_op("where", kind=OpKind.BROADCAST, arity=3, infer=_infer_where, compute=np.where, compute_into=_where_into,
          vjp=lambda g, out, condition, a, b: (None, lambda: condition.where(g, 0.0).sum_to(a.shape),
                                               lambda: condition.where(0.0, g).sum_to(b.shape)),
          doc="where(condition, a, b): a where condition holds, else b (broadcasting)")


define_op("cast", kind=OpKind.ELEMENTWISE, arity=1, attrs={"dtype": A.DTYPE},
          infer=lambda x, dtype: TensorType(x.shape, dtype),
          compute=lambda x, dtype: x.astype(dtype),
          compute_into=lambda out, x, dtype: np.copyto(out, x, casting="unsafe"),
          vjp=lambda g, out, x, dtype: (lambda: g.astype(x.dtype),),
          doc="convert to another dtype")


# The seeds' tanh approximation of GELU. Python floats, not NumPy scalars: a float64 NumPy scalar would promote a
# float32 array to float64 under NumPy 2's rules.
GELU_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


def gelu_into(out: np.ndarray, x: np.ndarray) -> None:
    """0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x / (1 + exp(-2u)) (the same function:
    0.5 (1 + tanh u) is the sigmoid of 2u), as a chain of in-place ufuncs on `out` (which must not be x): no
    temporaries, and z*z*z rather than float `**`, which is ~60x slower. One exp and a division where tanh is an
    exp, a division and a polynomial (a generated kernel's GELU takes half the time), and no cancellation where
    1 + tanh u nears 0: for x below about -3 the tanh form lost most of the result's digits, this keeps them."""
    np.multiply(x, x, out=out)
    out *= x
    out *= GELU_CUBIC
    out += x
    out *= -2.0 * GELU_SQRT_2_OVER_PI  # -2u
    np.exp(out, out=out)
    out += 1.0
    np.divide(x, out, out=out)


define_op("gelu", kind=OpKind.ELEMENTWISE, arity=1, infer=_float_unary, compute_into=gelu_into,
          vjp=lambda g, out, x: (lambda: g.gelu_grad(x),),
          cost=lambda out, x: 8 * out.size,  # three multiplies for the cube, exp, and four more around it
          doc="GELU, tanh approximation (as in the TinyTorch seed)")


def _relu_into(out: np.ndarray, x: np.ndarray) -> None:
    np.maximum(x, 0, out=out)  # NaN stays NaN, as torch's relu keeps it


# Gradient 0 at x == 0, as torch's (maximum(x, 0) would split a tie into halves).
define_op("relu", kind=OpKind.ELEMENTWISE, arity=1, infer=_float_unary,
          compute=lambda x: np.maximum(x, x.dtype.type(0)), compute_into=_relu_into, inplace=True,
          vjp=lambda g, out, x: (lambda: (x > 0.0).where(g, 0.0),),
          doc="max(x, 0), with gradient 0 at 0")


def _sigmoid_into(out: np.ndarray, x: np.ndarray) -> None:
    """1 / (1 + exp(-x)) without overflow: with e = exp(-|x|) in (0, 1], 1 / (1 + e) for x >= 0 and e / (1 + e)
    below, so exp never sees a large positive argument (out must not be x: x is read after e is made)."""
    e = np.exp(-np.abs(x))
    np.divide(np.where(x >= 0, 1, e), e + 1, out=out)


define_op("sigmoid", kind=OpKind.ELEMENTWISE, arity=1, infer=_float_unary, compute_into=_sigmoid_into,
          vjp=lambda g, out, x: (lambda: g * (out * (1.0 - out)),),
          cost=lambda out, x: 5 * out.size,  # abs, exp, select, add, divide
          doc="logistic sigmoid 1 / (1 + exp(-x)), computed without overflow")
