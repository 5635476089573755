"""The generated kernels' float32 exp and tanh (passes/numba_backend/source_text.py) over every float32 input:
the largest error in ULP of the exact value (float64's function, rounded results compared in float64) where the
result is a normal float32, NumPy's own float32 functions beside them, and that NaN stays NaN, overflow gives the
infinity and underflow stays within a subnormal step. tests/test_numba_kernels.py's EXP32_ULP and TANH32_ULP
come from here. About 8 minutes on one core.

    python benchmarks/float32_functions.py
"""

from __future__ import annotations

import numpy as np

from graphgpt.passes.numba_backend.engine import load_kernel
from graphgpt.passes.numba_backend.source_text import float32_helpers, module_text

CHUNK = 1 << 24  # float32 bit patterns per pass: 256 passes over the 2^32


def kernel():
    """One loop computing exp32 and tanh32 of every element, compiled as the kernels' helpers are."""
    source = module_text(["exp32 and tanh32 over an array"], float32_helpers("float32", "exp", "tanh"), [
        "@njit(cache=True)", "def both(exps, tanhs, x):", "    for i in range(x.size):",
        "        exps[i] = exp32(x[i])", "        tanhs[i] = tanh32(x[i])"])
    return load_kernel(source, "both")


def main() -> None:
    both = kernel()
    tiny, largest = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    subnormal_step = float(np.finfo(np.float32).smallest_subnormal)
    worst = {(name, side): 0.0 for name in ("exp", "tanh") for side in ("kernel", "numpy")}
    problems: list[str] = []
    for start in range(0, 1 << 32, CHUNK):
        x = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32).view(np.float32)
        exps, tanhs = np.empty_like(x), np.empty_like(x)
        both(exps, tanhs, x)
        with np.errstate(all="ignore"):
            for name, ours, numpys, exact in (("exp", exps, np.exp(x), np.exp(x.astype(np.float64))),
                                              ("tanh", tanhs, np.tanh(x), np.tanh(x.astype(np.float64)))):
                normal = (np.abs(exact) >= tiny) & (np.abs(exact) < largest)
                if normal.any():
                    spacing = np.spacing(np.abs(exact[normal]).astype(np.float32)).astype(np.float64)
                    for side, values in (("kernel", ours), ("numpy", numpys)):
                        error = float(np.max(np.abs(values[normal] - exact[normal]) / spacing))
                        worst[name, side] = max(worst[name, side], error)
                nan = np.isnan(x)
                if not np.all(np.isnan(ours[nan])):
                    problems.append(f"{name}: a NaN input gave a number")
                over = ~nan & (np.abs(exact) >= largest)
                if not np.array_equal(ours[over], exact[over].astype(np.float32)):
                    problems.append(f"{name}: an overflowing input did not give the infinity")
                under = ~nan & (np.abs(exact) < tiny)
                if np.any(np.abs(ours[under] - exact[under]) > 2 * subnormal_step):
                    problems.append(f"{name}: a subnormal result off by more than two subnormal steps")
    for name in ("exp", "tanh"):
        print(f"{name}: at most {worst[name, 'kernel']:.4f} ULP (the kernels'), {worst[name, 'numpy']:.4f} "
              f"(NumPy's), over every float32 input with a normal result")
    print("NaN, overflow and underflow: " + ("as required" if not problems else "; ".join(sorted(set(problems)))))


if __name__ == "__main__":
    main()
