"""The Numba backend: generated kernels (Python source with @njit loops, compiled by Numba through LLVM) for the
row-wise, elementwise and reduction ops, each one pass over memory, and for fused attention, in place of their
NumPy kernels; matmuls and everything else stay NumPy and BLAS.

    source_text.py          pieces every kernel source is written from (loops over rows, reductions)
    rowwise_kernels.py      layer_norm, layer_norm_grad, softmax
    elementwise_kernels.py  gelu, gelu_grad, fused elementwise programs
    reduction_kernels.py    sum over leading axes, layer_norm_gamma_grad, scatter_add
    attention_kernels.py    attention, attention_grad (a query row at a time)
    engine.py               source -> compiled function, cached in the process and on disk
    bit_casts.py            float32_from_bits, the bit cast the float32 exp builds 2^n with
    backend.py              which node gets which kernel, with how many threads

Importing this package does not import numba; compiling a kernel does.
"""

from .backend import GeneratedKernel, NumbaBackend
from .engine import cached_kernel_files, kernel_cache_folder, kernel_file_name, numba_available

__all__ = ["GeneratedKernel", "NumbaBackend", "cached_kernel_files", "kernel_cache_folder", "kernel_file_name",
           "numba_available"]
