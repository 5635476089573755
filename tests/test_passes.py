"""Optimisation passes: each preserves results (GPT forward outputs, gradients and optimizer updates, and small
random graphs), the verifier accepts every stage, and each rule does what it says on a graph built to need it."""

import numpy as np
import pytest

import graphgpt
from graphgpt.passes.schedule import Schedule
from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.nn import functional as F
from graphgpt.passes.manager import (DEFAULT_PIPELINE, OPTIONAL_PASSES, PASSES, VALUE_CHANGING_PASSES,
                                     default_pipeline, run_pipeline)
from conftest import fuse_elementwise_at_any_size, make_gpt, make_tokens

PIPELINES = ([[name] for name in DEFAULT_PIPELINE + OPTIONAL_PASSES + tuple(VALUE_CHANGING_PASSES)]
             + [list(DEFAULT_PIPELINE), list(default_pipeline(fast_math=True))]
             + [[*DEFAULT_PIPELINE, fuse_elementwise_at_any_size]])


def run_graph(graph, inputs, bindings):
    """Outputs of a graph; parameters come from copies so updates do not leak between runs."""
    params = [np.array(bindings[value.name].data, copy=True) for value in graph.params]
    outputs = Schedule(graph).run(inputs, params)
    return outputs, dict(zip((value.name for value in graph.params), params))


LEARNING_RATE = 1e-2


@pytest.mark.parametrize("passes", PIPELINES, ids=["+".join(getattr(p, "__name__", p) for p in pipeline)
                                                   for pipeline in PIPELINES])
def test_passes_preserve_gpt_forward_gradients_and_updates(passes):
    model = make_gpt(vocab=13, embed=12, layers=2, heads=3)
    tokens, targets = make_tokens(13, 2, 7), make_tokens(13, 2, 7, seed=1)
    forward = graphgpt.compile(model, tokens, passes=[])
    train = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=[],
                             optimizer=graphgpt.optim.AdamW(lr=LEARNING_RATE, clip_grad_norm=1.0))
    for compiled, inputs in ((forward, [tokens]), (train, [tokens, targets])):
        # fast math too: within these tolerances, the value-changing rewrites preserve results as well
        optimised, records = run_pipeline(compiled.graph, passes, verify_each=True, fast_math=True)
        assert [record.name for record in records] == ["input"] + [getattr(p, "__name__", p) for p in passes]
        before, params_before = run_graph(compiled.graph, inputs, compiled.bindings)
        after, params_after = run_graph(optimised, inputs, compiled.bindings)
        assert len(before) == len(after)
        for x, y in zip(before, after):
            np.testing.assert_allclose(y, x, rtol=2e-5, atol=1e-6)
        for name in params_before:
            if name.endswith("k_proj.bias"):
                # Its gradient is zero in exact arithmetic (softmax ignores a shift shared by every key score):
                # rounding noise, which the fast-math rewrites change and Adam scales up to steps of order lr on
                # either side. Only their size is comparable.
                assert np.abs(params_after[name] - params_before[name]).max() <= 2.5 * LEARNING_RATE, name
                continue
            np.testing.assert_allclose(params_after[name], params_before[name], rtol=2e-5, atol=1e-6,
                                       err_msg=name)


def test_default_pipeline_shrinks_the_training_graph():
    model = make_gpt()
    tokens = make_tokens(17, 2, 8)
    train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=0.1))
    stages = {stage.name: stage for stage in train.stages}
    # (Adam's update runs once over all parameters joined, and its moving averages are stored joined: the
    # per-parameter copies of its scalar work that common subexpressions merged, and the reshapes of each
    # parameter's state that simplify removed, are no longer in the input: 429 nodes, not 653. The pipeline
    # removes a sixth of what is left.)
    assert stages["eliminate_dead_nodes"].nodes < 0.85 * stages["input"].nodes
    assert stages["eliminate_common_subexpressions"].summary["nodes merged"] > 0
    assert stages["eliminate_common_subexpressions"].removed and not stages["eliminate_dead_nodes"].created
    report = train.report()
    for name in ["input", *DEFAULT_PIPELINE]:
        assert name in report


RANDOM_UNARY = ["exp", "tanh", "neg", "gelu"]
RANDOM_BINARY = ["add", "sub", "mul", "maximum"]


def random_graph(seed):
    """A small random program with duplicates, constants, identities and transposes for the passes to find."""
    rng = np.random.default_rng(seed)
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((3, 4), "float64"))
    y = builder.add_param("y", TensorType((4,), "float64"))
    values = [x, y]
    for _ in range(14):
        choice = rng.integers(6)
        a = values[rng.integers(len(values))]
        if choice == 0:
            values.append(builder.add_node(str(rng.choice(RANDOM_UNARY)), [a]))
        elif choice == 1:
            b = values[rng.integers(len(values))]
            values.append(builder.add_node(str(rng.choice(RANDOM_BINARY)), [a, b]))
        elif choice == 2:
            one = builder.add_constant(np.ones((), np.float64))
            values.append(builder.add_node("mul", [a, one]))
        elif choice == 3 and a.type.rank == 2:
            once = builder.add_node("transpose", [a], {"perm": (1, 0)})
            values.append(builder.add_node("transpose", [once], {"perm": (1, 0)}))
        elif choice == 4:
            three = builder.add_constant(np.array(3.0))
            values.append(builder.add_node("pow", [builder.add_node("tanh", [a]), three]))
        else:
            c = builder.add_constant(rng.normal(size=(4,)))
            values.append(builder.add_node("add", [a, builder.add_node("exp", [c])]))
    outputs = [values[-1], values[len(values) // 2]]
    return builder.finish(outputs)


@pytest.mark.parametrize("seed", range(12))
def test_passes_preserve_random_graphs(seed):
    graph = random_graph(seed)
    inputs = [np.random.default_rng(seed).normal(size=(3, 4))]
    params = [np.random.default_rng(seed + 1).normal(size=(4,))]
    expected = Schedule(graph).run(inputs, params)
    optimised, records = run_pipeline(graph, verify_each=True)
    for x, y in zip(expected, Schedule(optimised).run(inputs, params)):
        np.testing.assert_array_equal(y, x)  # the default passes are exact
    assert len(optimised.nodes) <= len(graph.nodes)
    fast, _ = run_pipeline(graph, verify_each=True, fast_math=True)
    for x, y in zip(expected, Schedule(fast).run(inputs, params)):
        np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12)


def build(function, *types):
    builder = GraphBuilder()
    inputs = [builder.add_input(f"x{i}", t) for i, t in enumerate(types)]
    return builder.finish(function(builder, *inputs))


F32 = TensorType((2, 3), "float32")


def ops_after(graph, *passes, fast_math=False):
    optimised, _ = run_pipeline(graph, list(passes), verify_each=True, fast_math=fast_math)
    return [node.op for node in optimised.nodes]


def test_simplify_removes_identities_and_reduces_powers():
    def program(b, x):
        one = b.add_constant(np.float32(1))
        zero = b.add_constant(np.float32(0))
        three = b.add_constant(np.float32(3))
        y = b.add_node("add", [b.add_node("mul", [x, one]), zero])
        y = b.add_node("transpose", [b.add_node("transpose", [y], {"perm": (1, 0)})], {"perm": (1, 0)})
        y = b.add_node("reshape", [b.add_node("reshape", [y], {"shape": (6,)})], {"shape": (3, 2)})
        return [b.add_node("pow", [y, three]), b.add_node("neg", [b.add_node("neg", [x])])]

    exact = ops_after(build(program, F32), "simplify", "eliminate_dead_nodes")
    # x*1 and both transposes gone, one reshape; + 0.0 stays (x may be -0.0) and so does z**3 (pow rounds once)
    assert exact == ["constant", "constant", "add", "reshape", "pow"]
    fast = ops_after(build(program, F32), "simplify", "eliminate_dead_nodes", fast_math=True)
    assert fast == ["reshape", "mul", "mul"]  # and with fast math: x*1+0 gone, z**3 -> z*z*z


def test_simplify_keeps_a_multiply_by_one_that_broadcasts():
    def program(b, x):
        return [b.add_node("mul", [x, b.add_constant(np.ones((4, 2, 3), np.float32))])]

    assert "mul" in ops_after(build(program, F32), "simplify")


def test_simplify_joins_adjacent_row_slices_back_into_their_source():
    """A vector cut into pieces (a gradient bucket into each parameter's gradient) and joined again (for the
    optimizer's update) is the vector itself; joined rows of a part of it are one slice. Pieces that skip rows,
    or cut along another axis, stay joined copies. The same values either way."""
    def rows(b, x, start, stop):
        return b.add_node("slice", [x], {"slices": ((start, stop, 1), (0, 4, 1))})

    def program(b, x):
        pieces = [b.add_node("reshape", [rows(b, x, start, stop)], {"shape": ((stop - start) * 4,)})
                  for start, stop in ((0, 2), (2, 3), (3, 6))]
        flat = [b.add_node("reshape", [piece], {"shape": (piece.type.size,)}) for piece in pieces]  # as the
        return [b.add_node("concat", flat, {"axis": 0}),                                              # optimizer
                b.add_node("concat", [rows(b, x, 1, 2), rows(b, x, 2, 4)], {"axis": 0}),
                b.add_node("concat", [rows(b, x, 0, 1), rows(b, x, 2, 3)], {"axis": 0}),
                b.add_node("concat", [b.add_node("slice", [x], {"slices": ((0, 6, 1), (0, 2, 1))}),
                                      b.add_node("slice", [x], {"slices": ((0, 6, 1), (2, 4, 1))})], {"axis": 1})]

    graph = build(program, TensorType((6, 4), "float32"))
    optimised, _ = run_pipeline(graph, ["simplify", "eliminate_dead_nodes"], verify_each=True)
    whole, part, skipping, columns = optimised.outputs
    assert whole.producer.op == "reshape" and whole.producer.inputs[0] is optimised.inputs[0]  # x, flattened
    assert part.producer.op == "slice" and part.producer.attrs["slices"] == ((1, 4, 1), (0, 4, 1))
    assert skipping.producer.op == "concat" and columns.producer.op == "concat"
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    for got, want in zip(Schedule(optimised).run([x], []), Schedule(graph).run([x], [])):
        np.testing.assert_array_equal(got, want)


def test_simplify_leaves_joined_scalars_alone():
    def program(b, x):
        pieces = [b.add_node("reshape", [b.add_node("slice", [x], {"slices": ()})], {"shape": (1,)}) for _ in "ab"]
        return [b.add_node("concat", pieces, {"axis": 0})]

    assert ops_after(build(program, TensorType((), "float32")), "simplify")[-1] == "concat"


def test_fold_constants_and_cse():
    def program(b, x):
        c = b.add_node("exp", [b.add_constant(np.arange(3, dtype=np.float32))])
        first = b.add_node("add", [x, c])
        second = b.add_node("add", [x, c])
        return [b.add_node("mul", [first, second])]

    graph = build(program, F32)
    assert ops_after(graph, "fold_constants", "eliminate_common_subexpressions", "eliminate_dead_nodes") == \
        ["constant", "add", "mul"]


def test_unknown_pass_is_refused():
    with pytest.raises(ValueError, match="unknown pass 'fuse_everything'; known passes: simplify"):
        run_pipeline(build(lambda b, x: [x], F32), ["fuse_everything"])


def test_fusion_fuses_attention_score_and_residual_chains_and_preserves_results():
    model = make_gpt(vocab=13, embed=12, layers=2, heads=3)
    tokens, targets = make_tokens(13, 2, 7), make_tokens(13, 2, 7, seed=1)
    train = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=[])
    unfused, _ = run_pipeline(train.graph, list(DEFAULT_PIPELINE), verify_each=True)
    fused, records = run_pipeline(unfused, [fuse_elementwise_at_any_size], verify_each=True)
    programs = [node.attrs["program"] for node in fused.nodes if node.op == "fused_elementwise"]
    assert records[-1].summary["groups fused"] == len(programs) >= 8
    # each layer's attention scores scaled and masked (mul, add), its bias-add then residual-add (add, add), and
    # the backward's sums of gradients (add, add); softmax's, cross entropy's, GELU's and layer norm's gradients are
    # one kernel each already (ir/ops/gradients.py)
    assert {tuple(name for name, _ in program) for program in programs} == {("mul", "add"), ("add", "add")}
    assert "fused_elementwise" in str(fused)
    before, _ = run_graph(unfused, [tokens, targets], train.bindings)
    after, _ = run_graph(fused, [tokens, targets], train.bindings)
    for x, y in zip(before, after):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_horizontal_fusion_joins_each_layers_projections_exactly():
    model = make_gpt(vocab=13, embed=12, layers=2, heads=3)
    tokens = make_tokens(13, 2, 7)
    forward = graphgpt.compile(model, tokens, passes=[])
    # the projections as 2-D matmuls first: flattening (B, T, k) @ (k, n) also takes reassociate
    unfused, _ = run_pipeline(forward.graph, DEFAULT_PIPELINE, verify_each=True, fast_math={"reassociate"})
    fused, records = run_pipeline(unfused, ["fuse_horizontal_matmuls"], verify_each=True, fast_math={"reassociate"})
    joined = [node for node in fused.nodes if node.op == "concat"]
    assert records[-1].summary == {"matmul groups joined": 2, "matmuls joined": 6}
    assert [node.output.shape for node in joined] == [(12, 36), (12, 36)]
    assert all(len(node.inputs) == 3 and {v.name.rsplit(".", 2)[-2] for v in node.inputs} ==
               {"q_proj", "k_proj", "v_proj"} for node in joined)
    before, _ = run_graph(unfused, [tokens], forward.bindings)
    after, _ = run_graph(fused, [tokens], forward.bindings)
    # One GEMM may sum in another order than the three it replaces (tests/test_fast_math.py): as the BLAS kernel
    # picks, the bits are the same at these shapes or differ in the last places (OpenBLAS's Haswell kernel).
    np.testing.assert_allclose(after[0], before[0], rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fuse_horizontal_matmuls may change results.*fast_math=\\{'reassociate'\\}"):
        run_pipeline(unfused, ["fuse_horizontal_matmuls"])


def test_every_registered_pass_is_in_a_tested_pipeline():
    assert set(PASSES) <= {name for pipeline in PIPELINES for name in pipeline if isinstance(name, str)}
