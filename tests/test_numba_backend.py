"""compile(..., backend="numba") against backend="numpy", the reference: a GPT's forward, its training step (loss,
every gradient, the updated parameters) whole and in data-parallel shards, and compiled generation; the kernel
listing, the disk cache of compiled kernels, and the refusals. The kernels one by one: tests/test_numba_kernels.py.

Tolerances. In float64 the two backends differ only by reordered sums and the C library's exp/tanh against
NumPy's (within a few ULP, see test_numba_kernels.py): 1e-10 of each output's scale is a million times that and
a millionth of any real mistake. In float32 each kernel agrees with NumPy to within about n eps (n <= 64 here:
~1e-5 relative); FLOAT32_TOLERANCE allows ten times that after two layers, forward and backward. Gradients are
compared on the scale of the largest gradient of the model: the key projection's bias has a gradient of zero in
exact arithmetic (softmax ignores a constant added to every score), so its own scale is rounding noise.
"""

import re
import copy
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs numba: pip install numba")

import graphgpt  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.passes import backends  # noqa: E402

from conftest import make_gpt, make_tokens  # noqa: E402

TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def assert_close(generated, reference, dtype, scale=None):
    scale = np.max(np.abs(reference)) if scale is None else scale
    assert np.max(np.abs(np.asarray(generated) - reference)) <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_numpy(dtype):
    model = make_gpt(embed=24, heads=4).to(dtype)
    tokens = make_tokens(17, 2, 16)
    reference = graphgpt.compile(model, tokens)(tokens)
    generated = graphgpt.compile(model, tokens, backend="numba")
    assert_close(generated(tokens), reference, dtype)
    # the step interpreter of check_numerics calls the same kernels
    checked = graphgpt.compile(model, tokens, backend="numba", check_numerics=True)
    assert_close(checked(tokens), reference, dtype)


def training_step(model, tokens, targets, optimizer, **options):
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, optimizer=optimizer, **options)
    loss = step.run(tokens, targets)
    return loss, {name: grad.copy() for name, grad in step.grads.items()}, model.state_dict(), step


# AdamW's first step moves each parameter by about lr * g / (|g| + eps): an element whose gradient is rounding
# noise (the key biases' are zero in exact arithmetic, and a weight's element can be tiny by cancellation) moves
# by up to lr either way, on either backend. So float32 is compared after a momentum SGD step, whose update is
# lr times the (compared) gradient; float64's noise is small enough for AdamW.
OPTIMIZERS = {"float32": lambda: graphgpt.optim.SGD(lr=0.1, momentum=0.9),
              "float64": lambda: graphgpt.optim.AdamW(lr=1e-2)}


@pytest.mark.parametrize("dtype,shards", [("float32", 1), ("float64", 1), ("float32", 2)])
def test_training_step_matches_numpy(dtype, shards):
    """Loss, every gradient and every parameter after one update (its elementwise chains run as fused kernels),
    whole or as two data-parallel shards running their kernels on two threads at once."""
    model = make_gpt(embed=24, heads=4).to(dtype)
    twin = copy.deepcopy(model)
    tokens, targets = make_tokens(17, 4, 16, seed=1), make_tokens(17, 4, 16, seed=2)
    loss, grads, params, _ = training_step(model, tokens, targets, OPTIMIZERS[dtype](), shards=shards)
    numba_loss, numba_grads, numba_params, step = training_step(twin, tokens, targets, OPTIMIZERS[dtype](),
                                                                shards=shards, backend="numba")
    assert step.split.shards == shards
    assert "fused_elementwise" in step.kernels()  # the optimizer's update, fused and generated
    assert_close(numba_loss, loss, dtype)
    largest = max(np.max(np.abs(grad)) for grad in grads.values())
    for name in grads:
        assert_close(numba_grads[name], grads[name], dtype, scale=largest)
    # The key biases start at 0 and move by the update of a gradient of rounding noise (compared above, on the
    # scale of the largest gradient): on their own scale they are noise too.
    noise = {name for name in grads if name.endswith("attention.k_proj.bias")}
    for name in params.keys() - noise:
        assert_close(numba_params[name], params[name], dtype)


def test_generation_matches_numpy():
    """Greedy decoding through the prefill and decode graphs gives the same tokens with either backend."""
    model = make_gpt(vocab=17, embed=24, heads=4, max_seq_len=32)
    prompt = make_tokens(17, 1, 5)
    reference = graphgpt.compile_generation(model).generate(prompt, 12, top_k=1, seed=0)
    generation = graphgpt.compile_generation(model, backend="numba")
    assert np.array_equal(generation.generate(prompt, 12, top_k=1, seed=0), reference)
    assert "def layer_norm(" in generation.decode.kernels()


def test_kernel_listing_shares_identical_kernels():
    model = make_gpt(embed=24, heads=4)
    tokens = make_tokens(17, 2, 16)
    listing = graphgpt.compile(model, tokens, backend="numba").kernels()
    layer_norms = [line for line in listing.splitlines() if line.startswith("# ==== ") and ": layer_norm," in line]
    assert len(layer_norms) == 1 and "for 5 node(s)" in layer_norms[0]  # every block's two and ln_f: one kernel
    assert "@njit(" in listing and "def softmax(out, x):" in listing and "def gelu(out, a0):" in listing
    assert graphgpt.compile(model, tokens).kernels() == ""  # the NumPy backend generates none


def test_the_text_ir_names_each_nodes_kernel_and_lists_their_source():
    model = make_gpt(embed=24, heads=4)
    tokens = make_tokens(17, 4, 16)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, backend="numba", shards=2,
                            optimizer=graphgpt.optim.SGD(lr=0.1))
    text, listing = step.ir, step.kernels()
    headers = [line for line in listing.splitlines() if line.startswith("# ==== kernel ")]
    assert text.endswith(listing) and "# ---- generated kernels ----" in text
    for header in headers:  # '# ==== kernel 3 of 11: softmax, for 1 node(s): %46 (blocks.0.attention) ===='
        number, op = re.match(r"# ==== kernel (\d+) of \d+: (\w+),", header).groups()
        for label in re.findall(r"(%\d+) \(", header):
            assert any(line.strip().startswith(f"{label}:") and f"= {op}" in line
                       and line.endswith(f"  kernel {number}") for line in text.splitlines()), (label, number)
    assert "kernel" not in graphgpt.compile(model, tokens).ir  # the NumPy backend: no kernel named


def test_lazy_and_symbolic_compiles_take_the_backend():
    model = make_gpt(embed=24, heads=4)
    lazy = graphgpt.compile(model, backend="numba", dynamic=True)
    for length in (8, 11):
        tokens = make_tokens(17, 2, length)
        assert_close(lazy(tokens), graphgpt.compile(model, tokens)(tokens), "float32")
    assert "def layer_norm(" in lazy.latest.kernels()


def test_compiled_kernels_are_cached_on_disk(tmp_path):
    """A second process finds the first one's compiled kernel in the cache folder and does not compile it."""
    script = f"""
import os, sys
os.environ["GRAPHGPT_KERNEL_CACHE"] = {str(tmp_path)!r}
import numpy as np
from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.passes.numba_backend import NumbaBackend
builder = GraphBuilder()
node = builder.add_node("gelu", [builder.add_input("x", TensorType((3, 5), "float64"))]).producer
kernel = NumbaBackend().kernel_for(node)
x = np.linspace(-3, 3, 15).reshape(3, 5)
out = np.empty_like(x)
kernel.function(out, x)
stats = kernel.function.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert runs[0].stdout.split() == ["0", "1"]  # compiled, and written to the cache
    assert runs[1].stdout.split() == ["1", "0"]  # loaded from it
    assert len(list(tmp_path.glob("kernel_*.py"))) == 1


def test_kernels_share_one_compiled_helper_module_cached_on_disk(tmp_path):
    """Float32 kernels import exp32 and the row sums from one helper module (compiled once, not once per kernel);
    a second process loads both the kernel and the helpers from the cache folder."""
    script = f"""
import os, sys
os.environ["GRAPHGPT_KERNEL_CACHE"] = {str(tmp_path)!r}
import numpy as np
from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.passes.numba_backend import NumbaBackend
kernels = []
for op in ("softmax", "gelu"):
    builder = GraphBuilder()
    node = builder.add_node(op, [builder.add_input("x", TensorType((3, 5), "float32"))], {{"axis": 1}} if op == "softmax"
                            else {{}}).producer
    kernels.append(NumbaBackend().kernel_for(node))
x = np.linspace(-3, 3, 15, dtype=np.float32).reshape(3, 5)
for kernel in kernels:
    kernel.function(np.empty_like(x), x)
helpers = [sys.modules[kernel.function.py_func.__module__].exp32 for kernel in kernels]
stats = kernels[0].function.stats
print(helpers[0] is helpers[1], sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            for _ in range(2)]
    assert runs[0].stdout.split() == ["True", "0", "1"]  # one exp32 for both; compiled, and written to the cache
    assert runs[1].stdout.split() == ["True", "1", "0"]  # loaded from it
    assert len(list(tmp_path.glob("kernel_*.py"))) == 3  # two kernels and their helpers


def test_a_kernel_importing_an_unknown_module_is_refused():
    from graphgpt.passes.numba_backend.engine import load_kernel

    source = "from graphgpt_kernel_0123456789abcdef01234567 import exp32\n\ndef f():\n    pass\n"
    with pytest.raises(ImportError, match=r"imports graphgpt_kernel_0123456789abcdef01234567, which no "
                                          r"register_module call made known"):
        load_kernel(source, "f")


def test_unknown_or_missing_backend_is_refused(monkeypatch):
    model = make_gpt()
    tokens = make_tokens(17, 2, 8)
    with pytest.raises(ValueError, match="unknown backend 'cuda'; expected one of 'numpy', 'numba'"):
        graphgpt.compile(model, tokens, backend="cuda")
    monkeypatch.setattr(backends, "numba_available", lambda: False)
    with pytest.raises(backends.BackendUnavailableError, match=r"pip install numba, or compile with backend='numpy'"):
        graphgpt.compile(model, tokens, backend="numba")


def test_the_default_is_the_fastest_backend_installed(monkeypatch):
    """Generated kernels where numba is installed, the NumPy interpreter without it; $GRAPHGPT_BACKEND chooses
    another (the suite's conftest sets numpy: here it is taken away)."""
    model = make_gpt(embed=24, heads=4)
    tokens = make_tokens(17, 2, 8)
    monkeypatch.delenv(backends.BACKEND_VARIABLE)
    assert backends.default_backend() == "numba"
    generated = graphgpt.compile(model, tokens)
    assert "def layer_norm(" in generated.kernels()
    assert_close(generated(tokens), graphgpt.compile(model, tokens, backend="numpy")(tokens), "float32")
    monkeypatch.setattr(backends, "numba_available", lambda: False)
    assert backends.default_backend() == "numpy"
    assert graphgpt.compile(model, tokens).kernels() == ""
    monkeypatch.setattr(backends, "numba_available", lambda: True)
    monkeypatch.setenv(backends.BACKEND_VARIABLE, "numpy")
    assert graphgpt.compile(model, tokens).kernels() == ""
    monkeypatch.setenv(backends.BACKEND_VARIABLE, "cuda")
    with pytest.raises(ValueError, match=r"\$GRAPHGPT_BACKEND must be one of numpy, numba, got 'cuda'"):
        graphgpt.compile(model, tokens)


def test_the_numba_backend_splits_smaller_steps_than_numpys(monkeypatch):
    """graphgpt train's step (0.78 GFLOP) splits by default with the numba backend (its kernels release the GIL),
    not with NumPy's, which says why in its threshold."""
    from graphgpt.passes import program_build

    monkeypatch.setattr(program_build, "available_cores", lambda: 2)
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(99, 64, 2, 4, max_seq_len=64)
    tokens = make_tokens(99, 16, 64)
    steps = {backend: graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, backend=backend)
             for backend in ("numba", "numpy")}
    assert steps["numba"].split.shards == 2
    assert steps["numpy"].split.shards == 1
    assert steps["numpy"].split.reason == "0.78 GFLOP per step is too little to gain (below 4 with the numpy backend)"
    tiny = graphgpt.compile(model, tokens[:2, :32], tokens[:2, :32], loss=F.cross_entropy, backend="numba")
    assert tiny.split.shards == 1 and "below 0.5 with the numba backend" in tiny.split.reason


@pytest.mark.parametrize("threads", [False, True])
def test_a_kernel_written_over_its_input_runs_its_aliased_entry_with_the_same_bits(threads):
    """Where the memory plan writes an elementwise kernel's output over an input (in place, or into the parameter
    an update reads), the schedule calls the kernel's `_over_a<k>` entry, the same loop given one array for both
    (which LLVM vectorises; given two that overlap it runs its scalar loop): the same results, bit for bit, as
    the kernel writing into memory of its own."""
    from graphgpt.ir import GraphBuilder, TensorType
    from graphgpt.passes.numba_backend import NumbaBackend
    from graphgpt.passes.schedule import Schedule
    builder = GraphBuilder()
    shape = (400, 240)  # over PARALLEL_MIN_ELEMENTS: with threads, the rows in prange
    x = builder.add_input("x", TensorType(shape, "float32"))
    p = builder.add_param("p", TensorType(shape, "float32"))
    y = builder.add_node("add", [x, p])
    program = (("sqrt", (1,)), ("mul", (2, 0)), ("div", (3, 1)))
    written_over = builder.add_node("fused_elementwise", [x, y], {"program": program})  # y dies here
    updated = builder.add_node("fused_elementwise", [written_over, p], {"program": program})  # into p
    graph = builder.finish([written_over], [(p, updated)])
    schedule = Schedule(graph, backend=NumbaBackend(threads=threads))
    entries = {step.node.output.id: step.function.__name__ for step in schedule.steps}
    assert entries[written_over.id] == "fused_elementwise_over_a1"
    assert entries[updated.id] == "fused_elementwise_over_a1"
    rng = np.random.default_rng(0)
    x_array, p_array = (np.abs(rng.standard_normal(shape)).astype(np.float32) for _ in range(2))
    parameter = p_array.copy()
    out, = schedule.run([x_array], [parameter])
    own = dict(schedule.kernels)[written_over.producer].function  # the entry writing into its own memory
    expected_out, expected_p = np.empty_like(x_array), np.empty_like(x_array)
    own(expected_out, x_array, x_array + p_array)
    own(expected_p, expected_out, p_array)
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(parameter, expected_p)
