"""Backends: what computes a schedule's nodes. "numpy", the reference, runs every node's NumPy kernel (its op's
`compute_into`); "numba" runs generated Numba kernels for the nodes that have one (passes/numba_backend) and
NumPy for the rest.

    backend = backend_named("numba")     # a NumbaBackend, or None for "numpy"
"""

from __future__ import annotations

from typing import Optional, Union

from .numba_backend import NumbaBackend, numba_available

BACKENDS = ("numpy", "numba")
# The NumPy interpreter stays the default until the generated kernels are measured faster on every workload
# (benchmarks/numba_kernels.py).
DEFAULT_BACKEND = "numpy"


class BackendUnavailableError(ImportError):
    """A backend was asked for whose engine is not installed."""


def backend_named(name: Union[None, str, NumbaBackend]) -> Optional[NumbaBackend]:
    """The backend called `name` (None: DEFAULT_BACKEND): None for "numpy", the kernels' generator otherwise; a
    NumbaBackend given itself (one with options, such as NumbaBackend(threads=True)).

    >>> backend_named("numpy") is None
    True
    """
    if isinstance(name, NumbaBackend):
        return name
    name = DEFAULT_BACKEND if name is None else name
    if name == "numpy":
        return None
    if name == "numba":
        if not numba_available():
            raise BackendUnavailableError("backend 'numba' needs the numba package, which is not installed: "
                                          "pip install 'graphgpt[numba]', or compile with backend='numpy'")
        return NumbaBackend()
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(map(repr, BACKENDS))}")
