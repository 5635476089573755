"""Which OpenBLAS kernel a benchmark's GEMMs run on, for the first lines of its output.

Some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for every process, so that old OpenBLAS builds pick a
kernel that works there; the OpenBLAS inside a current NumPy then runs that older core's kernel too (seen here:
Haswell's AVX2 kernel on an AVX-512 CPU, a 1024 x 1024 float32 matmul on two threads at 176 GFLOP/s against 250
with the kernel OpenBLAS picks itself). Every contender of one run shares the setting, so ratios taken within a
run stay like for like, but GFLOP/s, shares of the matmul peak and the GEMMs' part of a step change with it. To
measure with the kernel NumPy would choose, unset both for that command alone:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_step.py
"""

from __future__ import annotations

import os

import numpy as np  # noqa: F401  (loads NumPy's OpenBLAS, which threadpoolctl then finds)
from threadpoolctl import threadpool_info

FORCING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def describe_blas() -> str:
    """One line: the BLAS library NumPy loaded, its kernel (core type) and threads, and the variables forcing it."""
    libraries = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    found = "; ".join(f"{info.get('internal_api')} {info.get('version')}, kernel {info.get('architecture')}, "
                      f"{info.get('num_threads')} threads" for info in libraries) or "no BLAS library found"
    forced = [f"{name}={os.environ[name]}" for name in FORCING_VARIABLES if name in os.environ]
    if forced:
        return (f"BLAS: {found}; forced by {' '.join(forced)} (to measure with the kernel OpenBLAS picks itself, "
                f"run under `env {' '.join('-u ' + name for name in FORCING_VARIABLES)}`)")
    return f"BLAS: {found}"


if __name__ == "__main__":
    print(describe_blas())
