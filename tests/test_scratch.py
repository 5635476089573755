"""Kernel scratch (ir/scratch.py): each op declares what its kernel takes, exactly; the memory plan counts it; the
schedule hands its kernels an arena of its own; eager kernels use a pool per thread; and nothing is shared
between threads, so a data-parallel step with fused kernels computes what the whole-batch step does."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import graphgpt
from graphgpt.passes.schedule import ExecutionError, Schedule
from graphgpt.ir import OPS, TensorType
from graphgpt.ir.scratch import ScratchOverflowError, scratch_arena, scratch_arrays
from graphgpt.nn import functional as F
from graphgpt.passes.manager import DEFAULT_PIPELINE
from graphgpt.passes.memory_plan import plan_memory

from test_ops import CASES, prepared

rng = np.random.default_rng(0)


def normal(*shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


# Blocked kernels cut blocks of 2**18 elements (blockwise.py), fused ones of 2**17 (fused.py): (300, 1000) takes
# several blocks, (1, 300_000) and (3, 150_000) a row longer than a block, the rest less than one or none.
ROW_SHAPES = [(2, 3, 8), (5,), (3, 1), (300, 1000), (1, 300_000), (0, 8)]
FUSED_SHAPES = [(2, 3, 4), (), (300, 1000), (3, 150_000), (0, 4), (4, 0)]
FUSED_PROGRAMS = [
    (("sub", (0, 1)), ("mul", (2, 2)), ("tanh", (3,)), ("add", (4, 0))),  # a chain: one scratch block
    (("mul", (0, 1)), ("exp", (0,)), ("add", (2, 3)), ("tanh", (4,))),   # two intermediates live at once
]


def scratch_cases():
    """(op, input arrays, attrs) for every op that declares scratch, on shapes around its block size."""
    cases = []
    for shape in ROW_SHAPES:
        width = shape[-1]
        for dtype in ("float32", "float64") if shape == (300, 1000) else ("float32",):
            g, x, gamma, beta = normal(*shape, dtype=dtype), normal(*shape, dtype=dtype), \
                normal(width, dtype=dtype), normal(width, dtype=dtype)
            cases += [("layer_norm", [x, gamma, beta], {"eps": 1e-5}),
                      ("layer_norm_grad", [g, x, gamma], {"eps": 1e-5}),
                      ("layer_norm_gamma_grad", [g, x], {"eps": 1e-5}),
                      ("gelu_grad", [g, x], {})]
    cases.append(("gelu_grad", [normal(), normal()], {}))
    for shape in FUSED_SHAPES:
        for program in FUSED_PROGRAMS:
            cases.append(("fused_elementwise", [normal(*shape), normal(*shape[-1:])], {"program": program}))
    # Attention: one block of query rows (a decode step), and 600 rows in blocks of 13 ending with a short one.
    for q_shape, keys in (((2, 3, 1, 8), 40), ((4, 8, 600, 8), 600)):
        k = normal(*q_shape[:-2], keys, q_shape[-1])
        mask = normal(q_shape[-2], keys)
        cases.append(("attention", [normal(*q_shape), k, normal(*k.shape), mask], {"scale": 0.35}))
        if keys == q_shape[-2]:
            grads_inputs = [normal(*q_shape) for _ in range(3)] + [mask] + [normal(*q_shape) for _ in range(2)]
            cases.append(("attention_grad", grads_inputs, {"scale": 0.35}))
    # A batch times a batch stored transposed (q @ k^T) copies b into scratch: of the same batch, a broadcast one,
    # and attention's heads. (A b in row order takes none of the room declared for it: tested with the op table.)
    for a_shape, b_stored in (((2, 3, 5, 4), (2, 3, 6, 4)), ((2, 3, 5, 4), (1, 3, 6, 4)),
                              ((8, 4, 64, 16), (8, 4, 64, 16))):
        b = np.swapaxes(normal(*b_stored), -1, -2)
        cases.append(("matmul", [normal(*a_shape), b], {}))
        cases.append(("matmul_permuted", [normal(*a_shape), b], {"perm": (0, 2, 1, 3)}))
    return cases


SCRATCH_CASES = scratch_cases()


def case_id(case):
    op, arrays, attrs = case
    return f"{op}({','.join(str(TensorType.of(x)) for x in arrays)}){len(attrs.get('program', ()))}"


def declared_scratch(op, arrays, attrs) -> int:
    input_types = [TensorType.of(x) for x in arrays]
    return op.scratch_bytes(op.infer_type(input_types, attrs), input_types, attrs)


def run_in_arena(op, arrays, attrs, arena_bytes: int) -> np.ndarray:
    """The op's kernel, as a schedule runs it, with `arena_bytes` of planned scratch."""
    result_type = op.infer_type([TensorType.of(x) for x in arrays], attrs)
    out = np.full(result_type.shape, 7, result_type.numpy_dtype)
    with scratch_arena(np.empty(arena_bytes, np.uint8)):
        op.evaluate_into(out, arrays, attrs)
    return out


def test_every_op_that_takes_scratch_has_cases():
    declaring = {name for name, op in OPS.items() if op.scratch is not None}
    assert declaring >= {"fused_elementwise", "layer_norm", "layer_norm_grad", "layer_norm_gamma_grad", "gelu_grad",
                         "matmul", "matmul_permuted"}
    assert declaring == {op for op, _, _ in SCRATCH_CASES}


@pytest.mark.parametrize("case", SCRATCH_CASES, ids=[case_id(case) for case in SCRATCH_CASES])
def test_a_kernel_takes_exactly_the_scratch_its_op_declares(case):
    name, arrays, attrs = case
    op = OPS[name]
    attrs = op.check_attrs(attrs)
    declared = declared_scratch(op, arrays, attrs)
    np.testing.assert_array_equal(run_in_arena(op, arrays, attrs, declared), op.evaluate(arrays, attrs))
    if declared:  # a byte less does not do: the declaration is exact, and exceeding the arena names the op
        with pytest.raises(ScratchOverflowError, match=f"^{name} asked for {declared} bytes"):
            run_in_arena(op, arrays, attrs, declared - 1)


@pytest.mark.parametrize("row", CASES, ids=[row.id for row in CASES])
def test_every_op_in_the_op_table_runs_in_an_arena_of_its_declared_size(row):
    """Ops that declare no scratch take none: run in an empty arena, they would raise."""
    op, arrays, attrs = prepared(row)
    declared = declared_scratch(op, arrays, attrs)
    np.testing.assert_array_equal(run_in_arena(op, arrays, attrs, declared), op.evaluate(arrays, attrs))


def test_eager_scratch_is_reused_within_a_thread_and_never_shared_between_threads():
    seen = {}

    def take(name):
        first = scratch_arrays("probe", [(4,), (3, 5)], np.float32)
        again = scratch_arrays("probe", [(4,)], np.float32)
        assert np.shares_memory(first[0], again[0])  # reused, not allocated afresh
        assert not np.shares_memory(first[0], first[1])
        seen[name] = first

    threads = [threading.Thread(target=take, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(np.shares_memory(a, b) for a in seen["a"] for b in seen["b"])


def test_threads_running_scratch_kernels_at_once_get_the_single_threaded_results():
    x, g = normal(600, 1000), normal(600, 1000)
    gamma, beta = normal(1000), normal(1000)
    calls = [("layer_norm", [x, gamma, beta], {"eps": 1e-5}), ("gelu_grad", [g, x], {}),
             ("layer_norm_grad", [g, x, gamma], {"eps": 1e-5}),
             ("fused_elementwise", [x, gamma], {"program": FUSED_PROGRAMS[1]})]
    expected = [OPS[name].evaluate(arrays, attrs) for name, arrays, attrs in calls]
    start = threading.Barrier(2)

    def mismatches() -> list[str]:
        start.wait()
        return [name for _ in range(15) for (name, arrays, attrs), want in zip(calls, expected)
                if not np.array_equal(OPS[name].evaluate(arrays, attrs), want)]

    with ThreadPoolExecutor(2) as pool:
        results = [future.result() for future in [pool.submit(mismatches) for _ in range(2)]]
    assert results == [[], []]


def test_planned_bytes_count_the_scratch_of_layer_norm():
    graphgpt.manual_seed(0)
    norm = graphgpt.nn.LayerNorm(1000)
    x = normal(300, 1000)
    compiled = graphgpt.compile(norm, x)
    plan = plan_memory(compiled.graph)
    [node] = [node for node in compiled.graph.nodes if node.op == "layer_norm"]
    declared = OPS["layer_norm"].scratch_bytes(node.output.type, [value.type for value in node.inputs], node.attrs)
    assert declared == 262 * 1000 * 4  # one block of 262 whole rows (2**18 elements), one scratch array
    assert plan.scratch_bytes == declared
    assert plan.planned_bytes == plan.arena_bytes + declared
    assert compiled.planned_bytes == plan.planned_bytes
    np.testing.assert_array_equal(compiled.run(x), norm(graphgpt.Tensor(x)).data)


def test_an_arena_smaller_than_declared_fails_the_run_naming_the_node():
    graphgpt.manual_seed(0)
    norm = graphgpt.nn.LayerNorm(1000)
    x = normal(300, 1000)
    graph = graphgpt.compile(norm, x).graph
    plan = plan_memory(graph)
    short = Schedule(graph, dataclasses.replace(plan, scratch_bytes=plan.scratch_bytes - 64))
    params = [dict(norm.named_parameters())[value.name].data for value in graph.params]
    with pytest.raises(ExecutionError, match="layer_norm.*asked for") as raised:
        short.run([x], params)
    assert isinstance(raised.value.__cause__, ScratchOverflowError)
    # The run's arena is unset even after the failure: eager kernels are back on this thread's pool.
    assert not np.shares_memory(scratch_arrays("probe", [(8,)], np.float32)[0], short.scratch)


def test_data_parallel_step_with_fused_kernels_equals_the_whole_step():
    """Both shards run fused kernels at once on their own threads. With scratch shared between threads (a
    module-level pool) the gradients came out wrong in ~40% of runs, up to 0.5 relative; so twenty runs."""
    graphgpt.manual_seed(0)
    # Attention scores of (4, 8, 128, 128) per shard: big enough for fuse_elementwise to fuse at its default size.
    model = graphgpt.nn.GPT(17, 32, 1, 8, max_seq_len=128).to("float64")
    tokens, targets = (np.random.default_rng(seed).integers(0, 17, size=(8, 128)) for seed in (1, 2))
    passes = [*DEFAULT_PIPELINE, "fuse_elementwise"]
    whole, split = (graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=passes, shards=shards)
                    for shards in (1, 2))
    assert split.split.shards == 2
    shard = graphgpt.compile(model, tokens[:4], targets[:4], loss=F.cross_entropy, passes=passes, shards=1)
    # what each shard runs is fused, and more of its kernels take scratch arrays
    assert shard.graph.op_counts().get("fused_elementwise", 0) >= 1
    assert sum(OPS[node.op].scratch is not None for node in shard.graph.nodes) >= 4
    loss = whole.run(tokens, targets)
    for _ in range(20):
        np.testing.assert_allclose(split.run(tokens, targets), loss, rtol=1e-13)
        for name, gradient in whole.grads.items():
            np.testing.assert_allclose(split.grads[name], gradient, rtol=1e-10, atol=1e-13, err_msg=name)
