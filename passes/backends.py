"""Backends: what computes a schedule's nodes. "numpy", the reference, runs every node's NumPy kernel (its op's
`compute_into`); "numba" runs generated Numba kernels for the nodes that have one (passes/numba_backend) and
NumPy for the rest.

The default is the fastest one installed: "numba" where the numba package is, else "numpy" (the fallback, which
needs nothing more). $GRAPHGPT_BACKEND names another default for a process ("numpy" to run the reference
everywhere without changing code).

    backend = backend_named("numba")     # a NumbaBackend, or None for "numpy"
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .numba_backend import NumbaBackend, numba_available

BACKENDS = ("numpy", "numba")
BACKEND_VARIABLE = "GRAPHGPT_BACKEND"


class BackendUnavailableError(ImportError):
    """A backend was asked for whose engine is not installed."""


def default_backend() -> str:
    """The backend a compile without `backend=` uses: $GRAPHGPT_BACKEND if set, else the fastest installed
    (benchmarks/numba_kernels.py and benchmarks/train_command.py measure the generated kernels against NumPy)."""
    configured = os.environ.get(BACKEND_VARIABLE, "").strip()
    if configured:
        if configured not in BACKENDS:
            raise ValueError(f"${BACKEND_VARIABLE} must be one of {', '.join(BACKENDS)}, got {configured!r}")
        return configured
    return "numba" if numba_available() else "numpy"


def backend_named(name: Union[None, str, NumbaBackend]) -> Optional[NumbaBackend]:
    """The backend called `name` (None: default_backend()): None for "numpy", the kernels' generator otherwise; a
    NumbaBackend given itself (one with options, such as NumbaBackend(threads=True)).

    >>> backend_named("numpy") is None
    True
    """
    if isinstance(name, NumbaBackend):
        return name
    name = default_backend() if name is None else name
    if name == "numpy":
        return None
    if name == "numba":
        if not numba_available():
            raise BackendUnavailableError("backend 'numba' needs the numba package, which is not installed: "
                                          "pip install numba, or compile with backend='numpy'")
        return NumbaBackend()
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}")
