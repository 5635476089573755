"""Each generated Numba kernel against its op's NumPy kernel, the reference, on random inputs (float32 and
float64, odd and zero sizes, broadcast operands, infinities, NaN, signed zeros, fully masked softmax rows); cross
entropy's in tests/test_numba_cross_entropy.py, the reductions' in tests/test_numba_reductions.py.

What may differ, and by how much (u is the dtype's unit roundoff, eps / 2; n the row length):
- arithmetic (+ - * /, sqrt, negation, maximum) is computed operation for operation as NumPy does, in the same
  dtype: bit-identical;
- exp, log, tanh and pow are computed otherwise than by NumPy, which has its own SIMD versions, documented within
  2.52 ULP of the exact value for float32 exp and 3.83 for log (measured here: tanh 1.37). The kernels' float32
  exp and tanh are Cephes's, in vectorised float32 (passes/numba_backend/source_text.py): within EXP32_ULP and
  TANH32_ULP, measured over every float32 input by benchmarks/float32_functions.py (and checked on a sample
  below); log, pow and float64's functions are the C library's, within 1-2 ULP (glibc manual, "Errors in Math
  Functions"). So two results are at most LIBRARY_ULP_GAP = 5 ULP
  apart (measured on 4M inputs: 3, 4, 1 and 1 ULP for exp, log, tanh and pow). The gap is propagated through the
  arithmetic after the function, to first order;
- sums along a row are reordered (NumPy: a BLAS matrix-vector product; the kernel: vector lanes). Any order of
  an n-term sum is within (n - 1) u sum|terms| of the exact sum, so two orders differ by at most
  REORDERED_SUM = 2 (n + 1) u sum|terms| (the + 1: the kernel may also regroup a product inside a term). This is
  propagated through layer norm, its gradient and softmax to first order, with one rounding per operation on
  each side.
"""

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install numba")

from graphgpt.ir import GraphBuilder, TensorType, get_op  # noqa: E402
from graphgpt.ir.ops.elementwise import GELU_CUBIC, GELU_SQRT_2_OVER_PI  # noqa: E402
from graphgpt.passes.numba_backend.backend import SOURCES  # noqa: E402
from graphgpt.passes.numba_backend.elementwise_kernels import LONE_OP_MIN_ELEMENTS  # noqa: E402
from graphgpt.passes.numba_backend.engine import load_kernel  # noqa: E402
from graphgpt.passes.numba_backend.source_text import HELPER_MODULE  # noqa: E402

DTYPES = ("float32", "float64")
LIBRARY_ULP_GAP = 5
# The kernels' float32 exp and tanh, ULP from the exact value at worst over every float32 input (1.0103 and
# 1.3303, benchmarks/float32_functions.py): with NumPy's 2.52 and 1.37, the two sides stay within LIBRARY_ULP_GAP.
EXP32_ULP, TANH32_ULP = 1.02, 1.34


def make_node(op, input_shapes, dtype, attrs=None, input_dtypes=None):
    """A node of `op` over inputs of these shapes, of `dtype` (or each of `input_dtypes`)."""
    builder = GraphBuilder()
    dtypes = input_dtypes or [dtype] * len(input_shapes)
    inputs = [builder.add_input(f"a{k}", TensorType(shape, dtypes[k])) for k, shape in enumerate(input_shapes)]
    return builder.add_node(op, inputs, attrs or {}).producer


def both(node, arrays, parallel=False):
    """(the generated kernel's result, the NumPy kernel's) on the same inputs."""
    source = SOURCES[node.op](node, parallel)
    out_type = node.output.type
    generated = np.full(out_type.shape, np.nan, out_type.numpy_dtype)
    load_kernel(source.text, source.entry)(generated, *arrays)
    reference = np.full(out_type.shape, np.nan, out_type.numpy_dtype)
    get_op(node.op).compute_into(reference, *arrays, **node.attrs)
    return generated, reference


def assert_same_bits(generated, reference):
    """Equal bit for bit (any NaN matching any NaN: payloads are not compared)."""
    nan = np.isnan(reference)
    assert np.array_equal(np.isnan(generated), nan)
    integers = {4: np.int32, 8: np.int64}[reference.dtype.itemsize]
    assert np.array_equal(generated[~nan].view(integers), reference[~nan].view(integers))


def assert_within(generated, reference, bound):
    gap = np.abs(generated.astype(np.float64) - reference.astype(np.float64))
    assert np.array_equal(np.isnan(generated), np.isnan(reference))
    finite = np.isfinite(reference)
    assert np.array_equal(generated[~finite], reference[~finite], equal_nan=True)
    worst = np.max(gap[finite] - bound[finite], initial=-np.inf)
    assert worst <= 0, f"exceeds the bound by {worst:.3g}"


def unit_roundoff(dtype):
    return np.finfo(dtype).eps / 2


def spacing(values, dtype):
    """The ULP of each value in `dtype` (as a float64 array)."""
    return np.spacing(np.abs(np.asarray(values, np.float64)).astype(dtype)).astype(np.float64)


def random(shape, dtype, seed=0, scale=1.0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype)  # 0-d stays an array


# -- elementwise: fused programs, bit for bit where only arithmetic is in them ----------------------------------

SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 3.0, 1e-30, 5e-324, -2.5, 1e30]


def special_values(shape, dtype, seed):
    values = random(shape, dtype, seed, scale=3.0)
    flat = values.reshape(-1)
    picks = np.random.default_rng(seed + 1).integers(0, len(SPECIALS), flat.size // 3)
    flat[:picks.size] = np.array(SPECIALS, dtype)[picks]
    np.random.default_rng(seed + 2).shuffle(flat)
    return values


ARITHMETIC_PROGRAMS = {
    # a0 (5, 7, 9), a1 (9,), a2 (7, 1), a3 (): broadcast along leading axes, along the row, and a 0-d scalar
    "add mul sub": ((("add", (0, 1)), ("mul", (4, 2)), ("sub", (5, 3))), [(5, 7, 9), (9,), (7, 1), ()]),
    "div neg maximum": ((("div", (0, 1)), ("neg", (4,)), ("maximum", (5, 2)), ("maximum", (3, 6))),
                        [(5, 7, 9), (5, 7, 9), (7, 1), ()]),
    "sqrt of a square, rank 1": ((("mul", (0, 0)), ("sqrt", (2,)), ("sub", (3, 1))), [(33,), (33,)]),
    "0-d": ((("mul", (0, 1)), ("add", (2, 0))), [(), ()]),
    "zero-size": ((("add", (0, 1)), ("mul", (2, 1))), [(4, 0, 3), (3,)]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ARITHMETIC_PROGRAMS)
def test_arithmetic_programs_are_bit_identical(name, dtype):
    program, shapes = ARITHMETIC_PROGRAMS[name]
    node = make_node("fused_elementwise", shapes, dtype, {"program": program})
    arrays = [special_values(shape, dtype, seed) for seed, shape in enumerate(shapes)]
    with np.errstate(all="ignore"):
        assert_same_bits(*both(node, arrays))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum"])
def test_lone_ops_broadcasting_an_input_are_bit_identical(op, dtype):
    """A lone elementwise node broadcasting an input (a bias add) runs a one-instruction kernel when large."""
    for shapes in ([(8, 64, 64), (64,)], [(64,), (4, 64, 64)], [(8, 1, 64), (8, 64, 1)], [(8, 64, 64), (8, 64, 1)]):
        node = make_node(op, shapes, dtype)
        assert node.output.type.size >= LONE_OP_MIN_ELEMENTS
        arrays = [special_values(shape, dtype, seed) for seed, shape in enumerate(shapes)]
        with np.errstate(all="ignore"):
            assert_same_bits(*both(node, arrays))


def test_lone_ops_keep_numpy_without_a_broadcast_or_when_small():
    for shapes in ([(8, 64, 64), (8, 64, 64)], [(8, 64, 64), ()], [(4, 64), (64,)]):
        assert SOURCES["add"](make_node("add", shapes, "float32"), False) is None, shapes


def test_maximum_picks_numpys_zero_and_nan():
    values = np.array([0.0, -0.0, np.nan, 1.0, -np.inf], np.float32)
    a, b = (array.ravel().copy() for array in np.meshgrid(values, values))
    node = make_node("fused_elementwise", [a.shape, b.shape], "float32", {"program": (("maximum", (0, 1)),)})
    assert_same_bits(*both(node, [a, b]))


def test_parallel_rows_give_the_same_bits():
    program = (("mul", (0, 1)), ("add", (2, 1)))
    node = make_node("fused_elementwise", [(6, 5, 17), (17,)], "float32", {"program": program})
    arrays = [random((6, 5, 17), "float32", 1), random((17,), "float32", 2)]
    assert_same_bits(*both(node, arrays, parallel=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("function", ["exp", "log", "tanh", "pow"])
def test_library_functions_within_their_ulp_gap(function, dtype):
    """An arithmetic instruction, then the library function (last: nothing after it to propagate through)."""
    if function == "pow":
        program, shapes = (("mul", (0, 1)), ("pow", (2, 1))), [(7, 33), (33,)]
    else:
        program, shapes = (("mul", (0, 1)), (function, (2,))), [(7, 33), (7, 33)]
    node = make_node("fused_elementwise", shapes, dtype, {"program": program})
    arrays = [np.abs(random(shape, dtype, seed, scale=4.0)) + 0.01 for seed, shape in enumerate(shapes)]
    generated, reference = both(node, arrays)
    assert_within(generated, reference, LIBRARY_ULP_GAP * spacing(reference, dtype))


def test_float32_exp_and_tanh_within_their_ulp_bounds():
    """The kernels' own float32 exp and tanh, on a dense sample of every binade they see: within EXP32_ULP and
    TANH32_ULP of the exact value, bounds measured over the whole float32 range."""
    from graphgpt.passes.numba_backend.source_text import float32_helpers, module_text

    rng = np.random.default_rng(13)
    x = np.concatenate([rng.uniform(-104, 89, 1 << 18), rng.uniform(-12, 12, 1 << 18),
                        np.exp2(rng.uniform(-30, 3, 1 << 17)) * rng.choice([-1, 1], 1 << 17)]).astype(np.float32)
    source = module_text(["test"], float32_helpers("float32", "exp", "tanh"), [
        "@njit(cache=True)", "def both(exps, tanhs, x):", "    for i in range(x.size):",
        "        exps[i] = exp32(x[i])", "        tanhs[i] = tanh32(x[i])"])
    exps, tanhs = np.empty_like(x), np.empty_like(x)
    load_kernel(source, "both")(exps, tanhs, x)
    for ours, exact, bound in ((exps, np.exp(x.astype(np.float64)), EXP32_ULP),
                               (tanhs, np.tanh(x.astype(np.float64)), TANH32_ULP)):
        normal = np.abs(exact) >= np.finfo(np.float32).tiny  # subnormal results: their spacing is fixed
        finite = normal & (np.abs(exact) < np.finfo(np.float32).max)
        ulps = np.abs(ours[finite] - exact[finite]) / spacing(exact[finite], "float32")
        assert ulps.max() <= bound


# -- GELU and its gradient: the exp gap, propagated -------------------------------------------------------------

def exp_terms(x, dtype):
    """e = exp(-2u), u = sqrt(2/pi) (x + k x^3), in float64 (capped at the dtype's largest, as the kernels cap
    it in the gradient), s = 1 / (1 + e), and the gap D between the two sides' e: the library gap. Everything
    before e is the same arithmetic on both sides, bit for bit."""
    largest = float(np.finfo(dtype).max)
    with np.errstate(over="ignore"):
        e = np.exp(-2 * GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * x ** 3))
    s = 1 / (1 + e)
    e = np.minimum(e, largest)
    return e, s, LIBRARY_ULP_GAP * spacing(e, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 129), (1, 1, 128), (0, 5), (257,)])
def test_gelu(shape, dtype):
    x = random(shape, dtype, 3, scale=3.0)
    node = make_node("gelu", [shape], dtype)
    generated, reference = both(node, [x])
    wide = x.astype(np.float64)
    e, s, gap = exp_terms(wide, dtype)
    # gelu = x / (1 + e): the gap in e, and each side's rounding of 1 + e, times |x| / (1 + e)^2; then each side's
    # rounding of the division
    bound = np.abs(wide) * s * s * (gap + spacing(1 + e, dtype)) + spacing(wide * s, dtype)
    assert_within(generated, reference, bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_grad(dtype):
    shape = (5, 67)
    g, x = random(shape, dtype, 4), random(shape, dtype, 5, scale=3.0)
    generated, reference = both(make_node("gelu_grad", [shape, shape], dtype), [g, x])
    g, x = g.astype(np.float64), x.astype(np.float64)
    c, k = GELU_SQRT_2_OVER_PI, GELU_CUBIC
    e, s, gap = exp_terms(x, dtype)
    slope = c * (1 + 3 * k * x * x)  # u'
    term = 2 * x * slope * e * s * s
    # result = g (s + 2 x u' e s^2): its derivative in e, -s^2 + 2 x u' s^2 (1 - 2 e s), times the gap in e; then
    # the eight roundings after e on each side, each at most one unit roundoff of the terms' size
    sensitivity = np.abs(g) * s * s * (1 + np.abs(2 * x * slope * (1 - 2 * e * s)))
    magnitude = np.abs(g) * (s + np.abs(term))
    bound = sensitivity * gap + 2 * 8 * unit_roundoff(dtype) * magnitude + spacing(reference, dtype)
    assert_within(generated, reference, bound)


# -- row-wise kernels: reordered sums, propagated --------------------------------------------------------------

def layer_norm_terms(x, eps, dtype):
    """Per element, in float64: the normalised x^, 1 / std r, and the two sides' gaps in x^ and in r / r, from
    the reordered sums of the mean and the variance."""
    u, n = unit_roundoff(dtype), x.shape[-1]
    reordered = 2 * (n + 1) * u
    mean = x.mean(-1, keepdims=True)
    d = x - mean
    variance = (d * d).mean(-1, keepdims=True)
    r = 1 / np.sqrt(variance + eps)
    mean_gap = reordered * np.abs(x).mean(-1, keepdims=True) + 2 * u * np.abs(mean)
    d_gap = mean_gap + 2 * u * np.abs(d)
    variance_gap = (reordered + 4 * u) * variance + 2 * (np.abs(d) * d_gap).mean(-1, keepdims=True)
    r_gap = 0.5 * variance_gap / (variance + eps) + 6 * u  # + eps, sqrt, reciprocal: one rounding each side
    normalized = d * r
    return normalized, r, r * d_gap + np.abs(normalized) * (r_gap + 2 * u), r_gap


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 64), (7, 129), (1, 1, 128), (33,), (4, 1), (0, 8), (3, 0)])
def test_layer_norm(shape, dtype):
    eps = 1e-5
    x = random(shape, dtype, 6, scale=2.0) + np.asarray(0.5, dtype)  # a mean away from 0, as activations have
    gamma, beta = random(shape[-1:], dtype, 7), random(shape[-1:], dtype, 8)
    node = make_node("layer_norm", [shape, shape[-1:], shape[-1:]], dtype, {"eps": eps})
    with np.errstate(all="ignore"):  # the zero-width rows' mean is 0 / 0 in NumPy's kernel (and never written)
        generated, reference = both(node, [x, gamma, beta])
    if not x.size:
        return
    normalized, _, normalized_gap, _ = layer_norm_terms(x.astype(np.float64), eps, dtype)
    gamma, beta = gamma.astype(np.float64), beta.astype(np.float64)
    # y = x^ gamma + beta: the gap in x^ times |gamma|, and the two roundings (times gamma, plus beta) each side
    bound = np.abs(gamma) * normalized_gap + 4 * unit_roundoff(dtype) * (np.abs(normalized * gamma) + np.abs(beta))
    assert_within(generated, reference, bound)


def test_layer_norm_in_parallel_rows():
    shape = (4, 9, 40)
    x, gamma, beta = random(shape, "float32", 1), random((40,), "float32", 2), random((40,), "float32", 3)
    node = make_node("layer_norm", [shape, (40,), (40,)], "float32", {"eps": 1e-5})
    serial, _ = both(node, [x, gamma, beta], parallel=False)
    parallel, _ = both(node, [x, gamma, beta], parallel=True)
    assert_same_bits(parallel, serial)  # a row is summed alike whichever thread runs it


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 67), (2, 2, 3, 33), (0, 4)])
def test_layer_norm_grad(shape, dtype):
    eps = 1e-5
    g, x = random(shape, dtype, 9), random(shape, dtype, 10, scale=2.0) + np.asarray(0.5, dtype)
    gamma = random(shape[-1:], dtype, 11)
    node = make_node("layer_norm_grad", [shape, shape, shape[-1:]], dtype, {"eps": eps})
    generated, reference = both(node, [g, x, gamma])
    if not x.size:
        return
    u, n = unit_roundoff(dtype), shape[-1]
    reordered = 2 * (n + 1) * u
    normalized, r, normalized_gap, r_gap = layer_norm_terms(x.astype(np.float64), eps, dtype)
    scaled = g.astype(np.float64) * gamma.astype(np.float64)
    projection = (scaled * normalized).mean(-1, keepdims=True)
    mean_scaled = scaled.mean(-1, keepdims=True)
    projection_gap = ((reordered + 6 * u) * np.abs(scaled * normalized).mean(-1, keepdims=True)
                      + (np.abs(scaled) * normalized_gap).mean(-1, keepdims=True))
    mean_scaled_gap = (reordered + 4 * u) * np.abs(scaled).mean(-1, keepdims=True)
    terms = np.abs(scaled) + np.abs(normalized * projection) + np.abs(mean_scaled)
    # dx = (s - x^ projection - mean(s)) r, each part's gap, r's, and four roundings each side
    bound = (r * (normalized_gap * np.abs(projection) + np.abs(normalized) * projection_gap + mean_scaled_gap)
             + np.abs(reference.astype(np.float64)) * r_gap + 2 * 4 * u * r * terms)
    assert_within(generated, reference, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 4, 17), (1, 1, 128), (9,), (0, 3), (3, 0), (2, 37, 9), (40, 3)])
def test_softmax(shape, dtype):
    x = random(shape, dtype, 12, scale=3.0)
    masked = x.size and x.ndim > 1
    if masked:  # a causal mask's -inf, a fully masked row, and a row holding NaN
        x[..., 0, 1:] = -np.inf
        x.reshape(-1, shape[-1])[-1] = -np.inf
        if x.shape[-2] > 2:
            x[..., 2, 3 % shape[-1]] = np.nan
    node = make_node("softmax", [shape], dtype, {"axis": len(shape) - 1})
    generated, reference = both(node, [x])
    if not x.size:
        return
    u, n = unit_roundoff(dtype), shape[-1]
    library = 2 * LIBRARY_ULP_GAP * u  # K ULP of e is at most 2 K u |e|
    # p = e / sum(e): the gap in e, in the reordered sum (and its terms' gaps), and the division on each side
    bound = np.abs(np.nan_to_num(reference.astype(np.float64))) * (2 * library + 2 * (n + 1) * u + 2 * u)
    assert_within(generated, reference, bound)
    if masked:
        assert np.all(generated.reshape(-1, n)[-1] == 0)  # the fully masked row: zeros


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_in_blocks_give_the_bits_of_one_row_at_a_time(dtype):
    """The kernel finds the maxima of a block of rows before their exps (rows_with_peaks): the same bits as the
    rank-1 kernel run on each row alone, serial and parallel, rank 2 and 3, across block boundaries (37 rows), with
    rows whose max is 0.0 and -0.0 both, NaN, -inf and all -inf."""
    x = random((3, 37, 19), dtype, 41, scale=3.0)
    x[0, 3, :5], x[0, 3, 5:] = 0.0, -0.0
    x[0, 4, :5], x[0, 4, 5:] = -0.0, 0.0
    x[1, 16, 7] = np.nan
    x[1, 17, :] = -np.inf
    x[2, 15, ::2] = -np.inf
    row_kernel = load_kernel(*(lambda source: (source.text, source.entry))(
        SOURCES["softmax"](make_node("softmax", [(19,)], dtype, {"axis": 0}), False)))
    one_at_a_time = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        row_kernel(one_at_a_time[index], x[index])
    for shape, parallel in [((3, 37, 19), False), ((3, 37, 19), True), ((111, 19), False), ((111, 19), True)]:
        node = make_node("softmax", [shape], dtype, {"axis": len(shape) - 1})
        generated, _ = both(node, [x.reshape(shape)], parallel=parallel)
        assert_same_bits(generated.reshape(x.shape), one_at_a_time)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_max_is_the_max_of_the_numbers_in_a_row(dtype):
    """The helper's four running maxima give the row's max over its numbers (NaN passed over), -inf for a row of
    NaN and -inf only or none, at every length around its multiples of 4."""
    row_max = load_kernel(f"from {HELPER_MODULE} import row_max\n", "row_max")
    rng = np.random.default_rng(5)
    for length in range(0, 14):
        for trial in range(20):
            row = rng.choice(np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -3.5, 2.25, 1e30], dtype), length)
            numbers = row[~np.isnan(row)]
            expected = numbers.max() if numbers.size else -np.inf
            assert row_max(row) == expected


def test_softmax_along_another_axis_keeps_numpy():
    assert SOURCES["softmax"](make_node("softmax", [(3, 4)], "float32", {"axis": 0}), False) is None
    assert SOURCES["softmax_grad"](make_node("softmax_grad", [(3, 4)] * 2, "float32", {"axis": 0}), False) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 4, 17), (9,), (0, 3), (3, 0)])
def test_softmax_grad(shape, dtype):
    g, y = random(shape, dtype, 13), np.abs(random(shape, dtype, 14, scale=0.3))
    if g.size:
        g.reshape(-1)[1] = np.inf  # an infinite gradient: inf and NaN as NumPy's
    node = make_node("softmax_grad", [shape, shape], dtype, {"axis": len(shape) - 1})
    with np.errstate(invalid="ignore"):  # the infinite gradient's row: inf - inf on both sides
        generated, reference = both(node, [g, y])
        u, n = unit_roundoff(dtype), shape[-1]
        g64, y64 = g.astype(np.float64), y.astype(np.float64)
        total = (g64 * y64).sum(-1, keepdims=True)
        # y (g - total): the totals differ by a reordered sum of the rounded products; then a subtraction and a
        # multiplication, each rounded on each side
        total_gap = 2 * (n + 1) * u * np.abs(g64 * y64).sum(-1, keepdims=True)
        bound = y64 * (total_gap + 2 * u * np.abs(g64 - total)) + 2 * u * np.abs(reference.astype(np.float64))
    assert_within(generated, reference, np.nan_to_num(bound, nan=np.inf, posinf=np.inf))
