"""The kernels of benchmarks/numba_kernels.py's table written with numexpr, the other engine for fused elementwise
work the generated kernels were measured against (the NumPy backend's own kernels are the third: chains of
in-place ufuncs with out=, in cache-sized row blocks).

numexpr compiles an expression string to its own bytecode and evaluates it in cache-sized blocks on every core
(one thread with threads=1). It has no row-wise reductions inside an expression (a sum may only end one, and no
value can be kept from one to the next), so layer norm, its gradient and softmax are written as a user would:
NumPy or numexpr reductions along the rows, then one numexpr pass per elementwise stage. Constants go in as
float32 scalars (a Python float in the string would make numexpr compute in float64).

`NUMEXPR_KERNELS[name](out, *arrays, threads=)` computes what the op of that name computes; numba_kernels.py
checks each against the NumPy kernel before timing it.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

try:
    import numexpr
except ImportError:  # the table leaves the column out and says why
    numexpr = None

from graphgpt.ir.ops.elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI

F32 = np.float32
EPS = 1e-5  # the table's layer norms' eps


def _evaluate(expression: str, threads: int, out: Optional[np.ndarray] = None, **names) -> np.ndarray:
    """numexpr.evaluate on `threads` threads. numexpr's thread count is its process-wide setting, and changing it
    costs ~100 us (its pool is rebuilt), so it is changed only when it differs: the table runs each contender once
    untimed before timing it, which pays for the change."""
    if numexpr.get_num_threads() != threads:
        numexpr.set_num_threads(threads)
    return numexpr.evaluate(expression, local_dict=names, out=out)


def _row_mean(expression: str, threads: int, width: int, **names) -> np.ndarray:
    return (_evaluate(f"sum({expression}, axis=1)", threads, **names) / F32(width))[:, None]


def gelu(out, x, threads):
    _evaluate("x / (one + exp(m2c * (x + k * x * x * x)))", threads, out, x=x, one=F32(1.0),
              m2c=F32(-2.0 * GELU_SQRT_2_OVER_PI), k=F32(GELU_CUBIC))


def gelu_grad(out, g, x, threads):
    c, k = GELU_SQRT_2_OVER_PI, GELU_CUBIC
    # e = exp(-2u) is used three times: one pass computes it, the second the rest (as ir/ops/gradients.py does:
    # s = 1 / (1 + e), s (1 - s) = e s^2 with e capped, 2u' = 2c (1 + 3k x^2))
    e = _evaluate("exp(m2c * x * (one + k * x * x))", threads, x=x, m2c=F32(-2.0 * c), one=F32(1.0), k=F32(k))
    _evaluate("g * (one / (one + e) + (c2 * (one + k3 * x * x)) * (where(e > big, big, e) / ((one + e) * (one + e)))"
              " * x)", threads, out, g=g, x=x, e=e, c2=F32(2.0 * c), one=F32(1.0), k3=F32(3 * k),
              big=np.finfo(np.float32).max)


def bias_residual(out, x, bias, residual, threads):
    _evaluate("x + bias + residual", threads, out, x=x, bias=bias, residual=residual)


def layer_norm(out, x, gamma, beta, threads):
    width = x.shape[1]
    mean = _row_mean("x", threads, width, x=x)
    variance = _row_mean("(x - mean) * (x - mean)", threads, width, x=x, mean=mean)
    _evaluate("(x - mean) / sqrt(variance + eps) * gamma + beta", threads, out, x=x, mean=mean, variance=variance,
              eps=F32(EPS), gamma=gamma, beta=beta)


def layer_norm_grad(out, g, x, gamma, threads):
    width = x.shape[1]
    mean = _row_mean("x", threads, width, x=x)
    variance = _row_mean("(x - mean) * (x - mean)", threads, width, x=x, mean=mean)
    inverse_std = _evaluate("one / sqrt(variance + eps)", threads, variance=variance, one=F32(1.0), eps=F32(EPS))
    names = dict(g=g, x=x, gamma=gamma, mean=mean, inverse_std=inverse_std)
    scaled_mean = _row_mean("g * gamma", threads, width, **names)
    projection = _row_mean("g * gamma * (x - mean) * inverse_std", threads, width, **names)
    _evaluate("(g * gamma - scaled_mean - (x - mean) * inverse_std * projection) * inverse_std", threads, out,
              scaled_mean=scaled_mean, projection=projection, **names)


def softmax(out, x, threads):
    largest = _evaluate("max(x, axis=1)", threads, x=x)[:, None]
    _evaluate("exp(x - largest)", threads, out, x=x, largest=largest)
    total = _evaluate("sum(e, axis=1)", threads, e=out)[:, None]
    _evaluate("e / total", threads, out, e=out, total=total)


NUMEXPR_KERNELS: dict[str, Callable] = {
    "layer_norm": layer_norm, "layer_norm_grad": layer_norm_grad, "softmax": softmax, "gelu": gelu,
    "gelu_grad": gelu_grad, "bias + residual (fused)": bias_residual}


def unavailable_reason() -> Optional[str]:
    """Why the numexpr columns are left out, or None."""
    return None if numexpr is not None else "numexpr is not installed (pip install numexpr)"
