"""The generated attention kernels (passes/numba_backend/attention_kernels.py) against the fused op's NumPy
kernels (ir/ops/attention.py), the reference: float32 and float64, the masks the attention fusion pass makes (a
causal (T, T), the (1, 1) zeros of no mask) and others that broadcast, a fully masked row, NaN and overflow
reaching rows as they do in NumPy, the keys a causal mask hides left out of the loops; and a GPT training step
compiled with fast_math={"reassociate"} on the numba backend against the NumPy backend, running the kernels.

The bound. The kernels compute what NumPy's do, elementwise step for elementwise step, but sum in another order
(over d, over the keys, over the query rows, in vector lanes rather than BLAS's blocks) and, in float32, take exp
from exp32 rather than NumPy's SIMD exp (at most 5 ULP apart, see tests/test_numba_kernels.py): to first order a
few units of eps times the largest term. As tests/test_attention_fusion.py does for the fused op against the
composite, we allow 64 eps of the dtype times the largest magnitude of the output (of the three gradients
together for attention_grad: dq and dk are zero in exact arithmetic where a row sees one key, so their own scale
is rounding noise). Measured: at most 8 eps in these tests, 6 in the training step."""

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install numba")

import graphgpt  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes.numba_backend import backend  # noqa: E402
from graphgpt.passes.numba_backend.attention_kernels import attention_grad_source, attention_source  # noqa: E402

from conftest import make_gpt, make_tokens  # noqa: E402
from test_attention_fusion import assert_gradients_within_reordering, assert_within_reordering  # noqa: E402
from test_numba_kernels import both, make_node  # noqa: E402

DTYPES = ("float32", "float64")
# 1 / sqrt(8) rounded to float32, as fuse_attention finds it in a GPT of head size 8: the training step's kernels
# are then those compiled here (each kernel source compiles once per machine, a few seconds).
SCALE = float(np.float32(1 / np.sqrt(8)))


def assert_within_bound(generated, reference, dtype):
    """NaN and infinities where NumPy has them, and elsewhere within 64 eps of the largest finite magnitude of the
    reference."""
    finite = np.isfinite(reference)
    assert np.array_equal(generated[~finite], reference[~finite], equal_nan=True), \
        f"not NumPy's NaN or inf at {np.argwhere(np.isfinite(generated) != finite)[:4].tolist()}"
    if not finite.any():
        return
    scale = max(float(np.abs(reference[finite]).max()), np.finfo(dtype).tiny)
    gap = float(np.abs(generated[finite].astype(np.float64) - reference[finite]).max())
    assert gap <= 64 * np.finfo(dtype).eps * scale, f"{gap / scale / np.finfo(dtype).eps:.1f} eps"


def causal(length, dtype):
    return np.triu(np.full((length, length), -np.inf), 1).astype(dtype)


def operands(shape, dtype, seed=0):
    """q, k, v, dout of `shape`, q, k and v as the GPT passes them: transposed views of (B, T, H, d)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((shape[0], shape[2], shape[1], shape[3])).astype(dtype) for _ in range(3)]
    return [array.transpose(0, 2, 1, 3) for array in arrays] + [rng.standard_normal(shape).astype(dtype)]


def run_both(q, k, v, mask, dout, parallel=False):
    """(generated, NumPy) of attention, then of attention_grad (whose `out` is NumPy's forward)."""
    shapes = [q.shape, k.shape, v.shape, mask.shape]
    forward = make_node("attention", shapes, q.dtype.name, {"scale": SCALE})
    out, out_reference = both(forward, [q, k, v, mask], parallel)
    backward = make_node("attention_grad", shapes + [q.shape, q.shape], q.dtype.name, {"scale": SCALE})
    grads, grads_reference = both(backward, [q, k, v, mask, out_reference, dout], parallel)
    return (out, out_reference), (grads, grads_reference)


def check(q, k, v, mask, dout):
    (out, out_reference), (grads, grads_reference) = run_both(q, k, v, mask, dout)
    assert_within_bound(out, out_reference, q.dtype)
    assert_within_bound(grads, grads_reference, q.dtype)
    return out, grads


def mask_cases(batch, heads, length, dtype):
    """The masks fuse_attention makes (a causal (T, T), also with a learned bias added, and (1, 1) zeros for no
    mask), a bias per head and key broadcast over the batch and the rows, and masks differing per sequence (the
    second's later keys padding). Each pattern of length-1 axes is its own kernel source, compiled once."""
    rng = np.random.default_rng(5)
    per_sequence = np.broadcast_to(causal(length, dtype), (batch, 1, length, length)).copy()
    per_sequence[-1, 0, :, length // 2:] = -np.inf
    per_sequence[-1, 0, :, 0] = 0.0
    cases = {"causal (T, T)": causal(length, dtype),
             "causal plus a bias": causal(length, dtype) + rng.standard_normal((length, length)).astype(dtype),
             "bias (H, 1, S)": rng.standard_normal((heads, 1, length)).astype(dtype)}
    if dtype == "float32" and batch > 1:  # float64 runs the same loops
        cases.update({"none: (1, 1) zeros": np.zeros((1, 1), dtype), "per sequence (B, 1, T, S)": per_sequence})
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 2, 64, 16), (2, 3, 1, 8)])
def test_kernels_match_numpy(shape, dtype):
    q, k, v, dout = operands(shape, dtype)
    for name, mask in mask_cases(shape[0], shape[1], shape[2], dtype).items():
        check(q, k, v, mask, dout)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_fully_masked_row_gives_zeros(dtype):
    q, k, v, dout = operands((2, 3, 9, 4), dtype)
    mask = causal(9, dtype)
    mask[4] = -np.inf  # a query that may see nothing
    out, grads = check(q, k, v, mask, dout)
    assert not out[:, :, 4].any() and not grads[0][:, :, 4].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_overflow_reach_the_rows_numpy_gives_them(dtype):
    """A NaN or inf anywhere, even at a key a causal mask hides from most rows, reaches the rows it reaches in
    NumPy (there, every row of its (batch, head): NaN + -inf is NaN), and so does a score that overflows: the
    kernels then sum every key. Other (batch, head) matrices keep their finite results."""
    with np.errstate(invalid="ignore", over="ignore"):  # NumPy's kernel warns of the NaN and inf it makes
        check_nan_and_overflow(dtype)


def check_nan_and_overflow(dtype):
    shape = (2, 2, 12, 8)
    cases = {}
    q, k, v, dout = operands(shape, dtype)
    q[0, 1, 3, 2] = np.nan  # one query row
    cases["NaN in a query"] = (q, k, v, dout)
    q, k, v, dout = operands(shape, dtype)
    k[1, 0, 9, 5] = np.nan  # a key that rows 0-8 may not see
    cases["NaN in a hidden key"] = (q, k, v, dout)
    q, k, v, dout = operands(shape, dtype)
    v[0, 0, 10, 1] = np.inf  # a value that rows 0-9 may not see
    cases["inf in a hidden value"] = (q, k, v, dout)
    q, k, v, dout = operands(shape, dtype)
    q[1, 1] = 1
    k[1, 1, 11] = np.finfo(dtype).max / 4  # its score overflows to inf (inf + -inf: NaN where it is hidden)
    cases["a hidden key whose score overflows"] = (q, k, v, dout)
    q, k, v, dout = operands(shape, dtype)
    dout[0, 1, 6, 0] = np.nan
    cases["NaN in dout"] = (q, k, v, dout)
    for name, (q, k, v, dout) in cases.items():
        out, grads = check(q, k, v, causal(12, dtype), dout)
        assert np.isnan(grads).any() and np.isfinite(grads).any(), name
    q, k, v, dout = operands(shape, dtype)
    mask = causal(12, dtype)
    mask[2, 1], mask[7, 0] = np.inf, np.nan  # visible keys of rows 2 and 7: those rows come out NaN
    out, grads = check(q, k, v, mask, dout)
    assert np.isnan(out[:, :, [2, 7]]).all() and not np.isnan(np.delete(out, [2, 7], axis=2)).any()


def test_parallel_heads_give_the_same_bits():
    q, k, v, dout = operands((2, 3, 17, 8), "float32")
    serial = run_both(q, k, v, causal(17, "float32"), dout)
    parallel = run_both(q, k, v, causal(17, "float32"), dout, parallel=True)
    for (generated, _), (generated_in_parallel, _) in zip(serial, parallel):
        assert np.array_equal(generated, generated_in_parallel)


def test_the_source_holds_the_scale_and_the_masks_pattern_not_sizes():
    first = make_node("attention", [(2, 3, 17, 8)] * 3 + [(17, 17)], "float32", {"scale": SCALE})
    other_sizes = make_node("attention", [(4, 3, 9, 8)] * 3 + [(9, 9)], "float32", {"scale": SCALE})
    assert attention_source(first, False).text == attention_source(other_sizes, False).text  # one compiled kernel
    assert f"np.float32({SCALE!r})" in attention_source(first, False).text
    broadcast = make_node("attention", [(2, 3, 17, 8)] * 3 + [(1, 1)], "float32", {"scale": SCALE})
    assert "mask_value = mask_row[0]" in attention_source(broadcast, False).text
    assert backend.SOURCES["attention"] is attention_source
    assert backend.SOURCES["attention_grad"] is attention_grad_source


def test_training_sizes_keep_numpys_fused_kernels():
    """Measured (backend.py's docstring): the generated kernels win on small attention only, so they are used up
    to SMALL_ONLY_MAX_ELEMENTS output elements."""
    numba_backend = backend.NumbaBackend()
    small = make_node("attention", [(1, 4, 32, 16)] * 3 + [(32, 32)], "float32", {"scale": SCALE})
    default_train = make_node("attention", [(16, 4, 64, 16)] * 3 + [(64, 64)], "float32", {"scale": SCALE})
    assert numba_backend.kernel_for(small).op == "attention"
    assert numba_backend.kernel_for(default_train) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_fused_gpt_training_step_runs_the_kernels_and_matches_numpy(dtype):
    model = make_gpt(vocab=19, embed=24, layers=2, heads=3).to(dtype)
    tokens, targets = make_tokens(19, 4, 12), make_tokens(19, 4, 12, seed=1)
    options = dict(loss=F.cross_entropy, shards=1, fast_math={"reassociate"})
    reference = graphgpt.compile(model, tokens, targets, backend="numpy", **options)
    generated = graphgpt.compile(model, tokens, targets, backend="numba", **options)
    headers = [line for line in generated.kernels().splitlines() if line.startswith("# ==== kernel ")]
    for op in ("attention", "attention_grad"):  # each layer's node runs the one generated kernel
        assert [header for header in headers if f": {op}, for 2 node(s)" in header], (op, headers)
    loss = reference.run(tokens, targets)
    expected = {name: grad.copy() for name, grad in reference.grads.items()}
    if dtype == "float32":
        assert_within_reordering(generated.run(tokens, targets), loss, "loss")
        assert_gradients_within_reordering(generated.grads, expected)
    else:
        assert abs(generated.run(tokens, targets) - loss) <= 1e-12 * abs(loss)
        largest = max(np.abs(grad).max() for grad in expected.values())
        for name, grad in generated.grads.items():
            assert np.abs(grad - expected[name]).max() <= 1e-12 * largest, name
