"""The generated reduction kernels (passes/numba_backend/reduction_kernels.py) against their ops' NumPy kernels:
sum over leading axes and scatter_add bit for bit (they add in NumPy's order), layer_norm_gamma_grad within the
bound of its reordered sums; then a GPT's training step with these kernels against the NumPy backend.

The bound for layer_norm_gamma_grad (u the unit roundoff, n rows of width W, per row s = 1 / std and a = mean
|x|): each output element is within u sum_rows |g| (s W a + |x^| (W / 2 + n + 7)) of the exact value, to first
order. Derivation: any order of a k-term sum is within (k - 1) u sum |terms| of it, so the mean is off by at most
W u a, which moves x^ by s W u a; the variance's sum (W terms, the deviations' error cancelling to first order)
and the square root and reciprocal move s by (W / 2 + 3) u relatively; the deviation and the two products add a
rounding each (3 u |x^|, 1 u more for the product with g); the sum over rows adds (n - 1) u sum |g x^|. NumPy's
kernel and the generated one are both held to it against a reference computed in long double.
"""

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install numba")

import graphgpt  # noqa: E402
from graphgpt.ir import GraphBuilder, TensorType, get_op  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes import schedule as schedule_module  # noqa: E402
from graphgpt.passes.numba_backend import backend  # noqa: E402
from graphgpt.passes.numba_backend.engine import load_kernel  # noqa: E402

from test_numba_kernels import assert_same_bits  # noqa: E402

DTYPES = ("float32", "float64")
SPECIALS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30]


def make_node(op, inputs, attrs):
    """A node of `op` on inputs of the given (shape, dtype)."""
    builder = GraphBuilder()
    values = [builder.add_input(f"a{k}", TensorType(shape, dtype)) for k, (shape, dtype) in enumerate(inputs)]
    return builder.add_node(op, values, attrs).producer


def run_both(node, arrays):
    """(the generated kernel's result, the NumPy kernel's) on the same inputs."""
    source = backend.SOURCES[node.op](node, False)
    out_type = node.output.type
    generated = np.full(out_type.shape, np.nan, out_type.numpy_dtype)
    load_kernel(source.text, source.entry)(generated, *arrays)
    reference = np.full(out_type.shape, np.nan, out_type.numpy_dtype)
    with np.errstate(invalid="ignore"):  # inf - inf in inputs holding both: NumPy warns, the results are compared
        get_op(node.op).compute_into(reference, *arrays, **node.attrs)
    return generated, reference


def spread(shape, dtype, seed):
    """Values over twelve orders of magnitude, so that the order of a sum shows in its last bits."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-6, 6, shape)).astype(dtype)


def with_specials(array, seed):
    """A copy holding NaN, infinities and zeros of both signs at random places."""
    array = array.copy()
    flat = array.reshape(-1)
    places = np.random.default_rng(seed).choice(flat.size, size=min(flat.size, len(SPECIALS)), replace=False)
    flat[places] = SPECIALS[:len(places)]
    return array


# --- sum over leading axes ---------------------------------------------------------------------------------

SUMS = [((16, 64, 64), (0, 1)), ((16, 64, 256), (0, 1)), ((16, 64, 64), (0,)),  # the GPT step's
        ((1, 7), (0,)), ((3, 5, 7), (0,)), ((5, 7, 1), (0,)), ((1003, 2), (0,)), ((6, 1, 3, 5), (0, 1, 2)),
        ((0, 5, 3), (0,)), ((9, 4, 1), (0, 1))]  # a single row, width 1, a remainder of rows, none, one result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("shape,axes", SUMS)
def test_sum_over_leading_axes_gives_numpys_bits(shape, axes, keepdims, dtype):
    node = make_node("sum", [(shape, dtype)], {"axes": axes, "keepdims": keepdims})
    for x in (spread(shape, dtype, 0), with_specials(spread(shape, dtype, 1), 2)):
        assert_same_bits(*run_both(node, [x]))


def test_sum_of_a_negative_zero_is_positive_as_numpys():
    node = make_node("sum", [((1, 3), "float32")], {"axes": (0,), "keepdims": False})
    generated, reference = run_both(node, [np.full((1, 3), -0.0, np.float32)])
    assert not np.signbit(reference).any()
    assert_same_bits(generated, reference)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_other_layouts_gives_numpys_bits(dtype):
    """A transposed view (NumPy then sums along its memory order) and a broadcast: NumPy's own sum, in the
    generated kernel's module."""
    node = make_node("sum", [((16, 64, 64), dtype)], {"axes": (0, 1), "keepdims": True})
    transposed = spread((16, 64, 64), dtype, 3).transpose(0, 2, 1)
    broadcast = np.broadcast_to(spread((1, 64, 64), dtype, 4), (16, 64, 64))
    for x in (transposed, broadcast):
        assert_same_bits(*run_both(node, [x]))


@pytest.mark.parametrize("shape,axes", [((4, 8), (1,)), ((4, 8, 3), (1,)), ((4, 8), (0, 1)), ((4, 8, 3), (0, 2))])
def test_other_sums_keep_numpys_kernel(shape, axes):
    assert backend.SOURCES["sum"](make_node("sum", [(shape, "float32")], {"axes": axes, "keepdims": True}),
                                  False) is None


# --- layer_norm_gamma_grad ---------------------------------------------------------------------------------

def gamma_grad_error_bound(g, x, eps, dtype):
    """The bound of the module docstring for each output element, from exact (long double) values."""
    g, x = g.astype(np.longdouble), x.astype(np.longdouble)
    width = x.shape[-1]
    rows = x.size // width if width else 0
    mean = x.mean(axis=-1, keepdims=True)
    inverse_std = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    normalized = (x - mean) * inverse_std
    magnitude = np.abs(x).mean(axis=-1, keepdims=True)
    per_term = np.abs(g) * (inverse_std * width * magnitude + np.abs(normalized) * (width / 2 + rows + 7))
    bound = np.finfo(dtype).eps / 2 * per_term.reshape(-1, width).sum(axis=0)
    exact = (g * normalized).reshape(-1, width).sum(axis=0)
    return exact, bound


def assert_within_bound(result, exact, bound):
    gap = np.abs(result.astype(np.longdouble) - exact)
    assert np.all(gap <= bound), f"exceeds the bound by {np.max(gap - bound):.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 64, 64), (3, 5, 7), (1, 8), (7,), (4, 1), (2, 3, 300)])
def test_layer_norm_gamma_grad_within_the_reordered_sums_bound(shape, dtype):
    rng = np.random.default_rng(5)
    # rows off centre (a mean of several standard deviations), where the mean's error matters most
    x = (rng.standard_normal(shape) + rng.uniform(-4, 4, shape[:-1] + (1,))).astype(dtype)
    g = spread(shape, dtype, 6)
    node = make_node("layer_norm_gamma_grad", [(shape, dtype)] * 2, {"eps": 1e-5})
    generated, reference = run_both(node, [g, x])
    exact, bound = gamma_grad_error_bound(g, x, 1e-5, dtype)
    assert_within_bound(generated, exact, bound)
    assert_within_bound(reference, exact, bound)  # NumPy's kernel too: the bound is one of its order


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_gamma_grad_propagates_nan_and_inf_as_numpy(dtype):
    shape = (6, 16)
    node = make_node("layer_norm_gamma_grad", [(shape, dtype)] * 2, {"eps": 1e-5})
    x, g = spread(shape, dtype, 7), spread(shape, dtype, 8)
    g[2, 5], g[3, 9], g[4, 9] = np.inf, np.nan, -np.inf  # columns 5 and 9 only
    generated, reference = run_both(node, [g, x])
    finite = np.isfinite(reference)
    assert np.array_equal(np.flatnonzero(~finite), [5, 9])
    assert np.array_equal(generated[~finite], reference[~finite], equal_nan=True)
    exact, bound = gamma_grad_error_bound(np.where(np.isfinite(g), g, 0), x, 1e-5, dtype)
    assert_within_bound(generated[finite], exact[finite], bound[finite])
    x[1, 3] = np.nan  # a row of NaN normalised values: NaN everywhere
    generated, reference = run_both(node, [g, x])
    assert np.isnan(reference).all() and np.isnan(generated).all()


# --- scatter_add -------------------------------------------------------------------------------------------

def scatter_node(updates_shape, num_rows, dtype, index_dtype="int64"):
    return make_node("scatter_add", [(updates_shape, dtype), (updates_shape[:-1], index_dtype)],
                     {"num_rows": num_rows})


def indices_with_counts(counts, seed):
    """Indices in random order, index k appearing counts[k] times."""
    indices = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(indices)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("counts", [
    [1, 7, 8, 9, 15, 16, 17, 0, 128, 129, 130, 136, 137, 257, 1000, 3],  # each side of the pairwise blocks
    [2] * 5 + [0] * 3])
@pytest.mark.parametrize("width", [1, 3, 64])
def test_scatter_add_gives_numpys_bits(counts, width, dtype):
    indices = indices_with_counts(counts, seed=width)
    updates = spread((len(indices), width), dtype, 9)
    node = scatter_node(updates.shape, len(counts) + 2, dtype)  # two more rows that receive nothing
    assert_same_bits(*run_both(node, [updates, indices]))
    assert_same_bits(*run_both(node, [with_specials(updates, 10), indices]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_of_embedding_gradients(dtype):
    """The GPT step's: a (batch, sequence) grid of tokens, and positions (one of each)."""
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, 100, (16, 64)).astype(np.int32)
    updates = spread((16, 64, 64), dtype, 12)
    assert_same_bits(*run_both(scatter_node((16, 64, 64), 100, dtype, "int32"), [updates, tokens]))
    positions = np.arange(64)[None]
    assert_same_bits(*run_both(scatter_node((1, 64, 64), 64, dtype), [updates[:1], positions]))
    # a negative zero alone at its index stays negative, as np.add.reduceat copies a run's first row
    generated, reference = run_both(scatter_node((1, 2), 3, dtype), [np.full((1, 2), -0.0, dtype), np.array([1])])
    assert np.signbit(reference[1]).all()
    assert_same_bits(generated, reference)


def test_scatter_add_of_views_and_of_nothing():
    updates = spread((64, 16, 8), "float32", 13).transpose(1, 0, 2)  # not contiguous
    indices = np.random.default_rng(14).integers(0, 5, (16, 64))
    assert_same_bits(*run_both(scatter_node((16, 64, 8), 5, "float32"), [updates, indices]))
    assert_same_bits(*run_both(scatter_node((0, 8), 4, "float32"), [np.zeros((0, 8), np.float32),
                                                                       np.zeros(0, np.int64)]))
    assert_same_bits(*run_both(scatter_node((3, 0), 4, "float32"), [np.zeros((3, 0), np.float32),
                                                                       np.array([0, 3, 3])]))


@pytest.mark.parametrize("bad", [-1, 5])
def test_scatter_add_index_out_of_range_raises_numpys_error(bad):
    node = scatter_node((4, 3), 5, "float32")
    source = backend.SOURCES["scatter_add"](node, False)
    indices = np.array([0, 2, bad, 1])
    with pytest.raises(IndexError) as generated:
        load_kernel(source.text, source.entry)(np.empty((5, 3), np.float32), np.ones((4, 3), np.float32), indices)
    with pytest.raises(IndexError) as reference:
        get_op("scatter_add").compute_into(np.empty((5, 3), np.float32), np.ones((4, 3), np.float32), indices,
                                           num_rows=5)
    assert str(generated.value) == str(reference.value)


# --- a GPT's training step ---------------------------------------------------------------------------------

REDUCTIONS = ("sum", "scatter_add", "layer_norm_gamma_grad")


def gpt_step(dtype, step_backend):
    """The loss and gradients of one AdamW step of a tiny GPT (vocab 100, embed 64, 2 layers, 4 heads, a batch of
    16 sequences of 64), and the compiled step."""
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(100, 64, 2, 4, max_seq_len=64).to(dtype)
    tokens = np.random.default_rng(15).integers(0, 100, (16, 64))
    targets = np.random.default_rng(16).integers(0, 100, (16, 64))
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, backend=step_backend, shards=1,
                            optimizer=graphgpt.optim.AdamW(model.parameters(), lr=1e-3))
    loss = step.run(tokens, targets)
    return np.asarray(loss), {name: grad.copy() for name, grad in step.grads.items()}, step


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_step_with_reduction_kernels(dtype, monkeypatch):
    """With the backend generating only these kernels, the loss and every gradient are NumPy's bits except the
    layer norms' gammas', which are within the bound of their reordered sums (checked on the very g and x each
    got, recorded from the NumPy run)."""
    recorded = []  # (g, x, eps, result) of each layer_norm_gamma_grad of the NumPy run

    def recording_writer(op):
        write = schedule_writer(op)
        if op.name != "layer_norm_gamma_grad":
            return write

        def record(out, g, x, eps):
            write(out, g, x, eps=eps)
            recorded.append((g.copy(), x.copy(), eps, out.copy()))
        return record

    schedule_writer = schedule_module.writer
    monkeypatch.setattr(schedule_module, "writer", recording_writer)
    loss, grads, _ = gpt_step(dtype, "numpy")
    monkeypatch.undo()
    monkeypatch.setattr(backend, "SOURCES", {op: backend.SOURCES[op] for op in REDUCTIONS})
    numba_loss, numba_grads, step = gpt_step(dtype, "numba")
    listing = step.kernels()
    assert all(f"def {entry}(" in listing for entry in ("sum_rows", "scatter_rows", "layer_norm_gamma_grad"))
    assert_same_bits(numba_loss, loss)
    assert len(recorded) == 5  # two per layer and the final layer norm
    gammas = {}
    for g, x, eps, result in recorded:
        name = next(name for name, grad in grads.items() if np.array_equal(grad, result))
        gammas[name] = gamma_grad_error_bound(g, x, eps, dtype)
    for name in grads:
        if name in gammas:
            exact, bound = gammas[name]
            assert_within_bound(numba_grads[name], exact, bound)
        else:
            assert_same_bits(numba_grads[name], grads[name])


def test_reductions_run_on_one_thread_with_threads():
    for node in (make_node("sum", [((256, 512), "float32")], {"axes": (0,), "keepdims": False}),
                 make_node("layer_norm_gamma_grad", [((256, 512), "float32")] * 2, {"eps": 1e-5}),
                 scatter_node((256, 512), 10, "float32")):
        kernel = backend.NumbaBackend(threads=True).kernel_for(node)
        assert kernel is not None and "prange(" not in kernel.source
