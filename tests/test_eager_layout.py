"""Eager execution and the compiled schedule without passes compute bit-identical values, also where the layout of
an operand decides the rounding: BLAS and NumPy's reductions add in another order for a transposed or sliced
operand than for a C-ordered one, so every eager result must be laid out as the schedule lays it out (C order for
computed values, NumPy's own views for views: ir/ops/registry.py, OpDef.evaluate).

The property test draws random shapes and chains of transposes, slices, reshapes, elementwise ops, reductions
and matmuls in float32 and float64, and compares the bytes of the results."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphgpt
from graphgpt import Tensor
from graphgpt.ir import get_op

DTYPES = ("float32", "float64")
# Each step maps a tensor to another (the program is the same Python code eagerly and traced).
STEP_KINDS = ("transpose", "slice", "reshape", "unary", "binary", "reduce", "softmax", "matmul")


def assert_same_bits(compiled: np.ndarray, eager: np.ndarray, program: str) -> None:
    assert compiled.dtype == eager.dtype and compiled.shape == eager.shape, program
    same = np.ascontiguousarray(compiled).tobytes() == np.ascontiguousarray(eager).tobytes()
    if not same:
        ulps = np.abs(compiled.astype(np.float64) - eager) / np.spacing(np.abs(eager).astype(eager.dtype))
        raise AssertionError(f"eager and compiled (passes=[]) differ, by up to {np.nanmax(ulps):.0f} ulp: "
                             f"{program}")


@st.composite
def layout_programs(draw):
    """(dtype, input shape, steps, weight shapes): a chain of steps over one input ending in a matmul and a sum,
    whose results depend on the layouts of the values they read."""
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(2, 4))
    # Up to 40 along an axis: BLAS picks its kernels by size, and the small ones all round alike.
    shape = tuple(draw(st.lists(st.integers(1, {2: 40, 3: 16, 4: 8}[rank]), min_size=rank, max_size=rank)))
    steps, weights = [], []
    current = shape
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(STEP_KINDS))
        if kind == "transpose":
            perm = tuple(draw(st.permutations(range(len(current)))))
            steps.append(("transpose", perm))
            current = tuple(current[axis] for axis in perm)
        elif kind == "slice":
            axis = draw(st.integers(0, len(current) - 1))
            start = draw(st.integers(0, current[axis] - 1))
            step = draw(st.integers(1, 3))
            steps.append(("slice", (axis, start, step)))
            current = current[:axis] + (len(range(start, current[axis], step)),) + current[axis + 1:]
        elif kind == "reshape" and len(current) >= 3:  # matmul needs two axes
            steps.append(("reshape", None))  # merge the first two axes (a copy when they are not contiguous)
            current = (current[0] * current[1],) + current[2:]
        elif kind == "unary":
            steps.append(("unary", draw(st.sampled_from(["exp", "tanh", "neg", "gelu"]))))
        elif kind == "binary":
            steps.append(("binary", draw(st.sampled_from(["add", "mul", "sub"]))))  # with its own transpose
        elif kind == "reduce" and len(current) >= 3:
            axis = draw(st.integers(0, len(current) - 1))
            steps.append(("reduce", (draw(st.sampled_from(["sum", "mean", "max"])), axis)))
            current = current[:axis] + current[axis + 1:]
        elif kind == "softmax":
            steps.append(("softmax", draw(st.integers(0, len(current) - 1))))
        elif kind == "matmul":
            columns = draw(st.integers(1, 40))
            steps.append(("matmul", len(weights)))
            weights.append((current[-1], columns))
            current = current[:-1] + (columns,)
    columns = draw(st.integers(1, 40))
    steps.append(("matmul", len(weights)))
    weights.append((current[-1], columns))
    steps.append(("reduce", ("sum", 0)))
    return dtype, shape, steps, weights


def run_steps(x, weights, steps):
    """The program over tensors (eager or traced)."""
    for kind, detail in steps:
        if kind == "transpose":
            x = x.permute(*detail)
        elif kind == "slice":
            axis, start, step = detail
            x = x[(slice(None),) * axis + (slice(start, None, step),)]
        elif kind == "reshape":
            x = x.reshape(-1, *x.shape[2:])
        elif kind == "unary":
            x = getattr(x, detail)() if detail != "neg" else -x
        elif kind == "binary":
            partner = x.permute(*reversed(range(x.ndim))).exp().permute(*reversed(range(x.ndim)))
            x = {"add": x + partner, "mul": x * partner, "sub": x - partner}[detail]
        elif kind == "reduce":
            operation, axis = detail
            x = getattr(x, operation)(axis=axis)
        elif kind == "softmax":
            x = x.softmax(axis=detail)
        elif kind == "matmul":
            x = x @ weights[detail]
    return x


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(layout_programs(), st.integers(0, 2**32 - 1))
def test_eager_equals_compiled_without_passes_bit_for_bit(program, seed):
    dtype, shape, steps, weight_shapes = program
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(dtype)
    weights = [rng.normal(size=weight_shape).astype(dtype) for weight_shape in weight_shapes]

    def function(x, *weights):
        return run_steps(x, weights, steps)

    with np.errstate(all="ignore"):  # exp of exp may overflow: both paths must agree on that too
        eager = function(Tensor(x, dtype=dtype), *[Tensor(w, dtype=dtype) for w in weights]).data
        compiled = graphgpt.compile(function, x, *weights, passes=[]).run(x, *weights)
    assert_same_bits(compiled, eager, f"{dtype} {shape} {steps}")


def test_the_reported_case_exp_of_a_transpose_then_matmul():
    """Issue 12, case 5: x.T.exp() @ w differed by 1 ulp on 25 of 300 shapes."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        m, k, n = (int(size) for size in rng.integers(1, 40, 3))
        dtype = DTYPES[trial % 2]
        x, w = rng.normal(size=(k, m)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)

        def function(x, w):
            return x.transpose().exp() @ w

        eager = function(Tensor(x, dtype=dtype), Tensor(w, dtype=dtype)).data
        assert_same_bits(graphgpt.compile(function, x, w, passes=[]).run(x, w), eager, f"{dtype} {(k, m, n)}")


def test_eager_results_are_laid_out_as_the_schedule_lays_them_out():
    transposed = np.arange(6.0).reshape(2, 3).T
    assert get_op("exp").evaluate([transposed], {}).flags.c_contiguous  # a computed value: C order
    assert get_op("sum").evaluate([transposed], {"axes": (0,), "keepdims": True}).flags.c_contiguous
    view = get_op("transpose").evaluate([transposed], {"perm": (1, 0)})  # a view stays NumPy's view
    assert np.shares_memory(view, transposed) and view.flags.c_contiguous
    sliced = get_op("slice").evaluate([transposed], {"slices": ((0, 3, 2), (0, 2, 1))})
    assert np.shares_memory(sliced, transposed)


def test_a_fortran_ordered_input_gives_eager_the_compiled_bits():
    """A user's Fortran-ordered array: compiled runs copy inputs into C order, and so does Tensor, so the eager
    reduction and matmul read the same layout."""
    rng = np.random.default_rng(5)
    x = np.asfortranarray(rng.normal(size=(37, 29)))
    w = rng.normal(size=(29, 11))

    def function(x, w):
        return (x.exp() @ w).sum(axis=0)

    eager = function(graphgpt.Tensor(x, dtype=x.dtype), graphgpt.Tensor(w, dtype=w.dtype)).data
    compiled = graphgpt.compile(function, x, w, passes=[]).run(x, w)
    assert np.array_equal(eager, compiled)
    assert graphgpt.Tensor(x, dtype=x.dtype).data.flags.c_contiguous
    same = np.ones((3, 4), np.float32)
    assert np.shares_memory(graphgpt.Tensor(same).data, same)  # C-ordered data is not copied
