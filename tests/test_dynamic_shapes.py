"""Symbolic sizes (ir/dims.py, compile(..., dynamic=...)): one trace serves every batch and length, equal to eager
and to a static compile at each size; questions about sizes are answered for every size, guarded, or refused."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import ShapeError, TensorType
from graphgpt.ir.dims import Dim, SymbolicShapeError, decide, exact_quotient, parse_size, same_shape
from graphgpt.ir.shape_env import ShapeEnv, shape_env
from graphgpt.nn import GPT
from graphgpt.nn import functional as F
from graphgpt.passes.specialize import specialize_graph

SIZES = [(2, 16), (1, 8), (3, 31), (1, 64), (3, 16), (1, 1)]
B, T = Dim.symbol("B"), Dim.symbol("T")


def tokens(batch, length, seed=0):
    return np.random.default_rng(seed + 97 * length + batch).integers(0, 65, size=(batch, length))


@pytest.fixture
def gpt():
    graphgpt.manual_seed(0)
    return GPT(vocab_size=65, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=64)


def test_one_trace_serves_every_batch_and_length_as_eager(gpt, traces):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    for batch, length in SIZES:
        example = tokens(batch, length)
        np.testing.assert_array_equal(fwd(example), gpt(graphgpt.Tensor(example)).data)
    assert traces == {"forward": 1, "training step": 0}
    assert "f32[B,T,32]" in str(fwd.graph) and "f32[T,T] = slice" in str(fwd.graph)
    assert [str(guard).split(" (")[0] for guard in fwd.shape_env.guards] == ["T <= 64"]


def test_static_compiles_trace_once_per_signature(gpt, traces):
    for batch, length in SIZES:
        example = tokens(batch, length)
        np.testing.assert_array_equal(graphgpt.compile(gpt, example)(example), gpt(graphgpt.Tensor(example)).data)
    assert traces == {"forward": len(SIZES), "training step": 0}


def test_dynamic_seq_only_keeps_the_batch_fixed(gpt):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic="seq")
    assert "f32[2,T,32]" in str(fwd.graph)
    np.testing.assert_array_equal(fwd(tokens(2, 40)), gpt(graphgpt.Tensor(tokens(2, 40))).data)
    with pytest.raises(graphgpt.InputError, match=r"input 0 'tokens' changed i64\[2,T\] -> i64\[3,40\]"):
        fwd(tokens(3, 40))


def test_a_size_past_a_guard_is_refused_in_one_line(gpt):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    assert fwd.signature_mismatch([tokens(1, 64)]) is None
    with pytest.raises(graphgpt.InputError, match=r"^guard T <= 64 \(transformer\.py:\d+\) fails at B=1, T=65"):
        fwd(tokens(1, 65))
    with pytest.raises(graphgpt.InputError, match=r"changed i64\[B,T\] -> f32\[2,16\]"):
        fwd(np.zeros((2, 16), np.float32))
    with pytest.raises(graphgpt.InputError, match=r"takes 1 input\(s\) \(tokens: i64\[B,T\]\), got 2"):
        fwd(tokens(2, 16), tokens(2, 16))


def test_dynamic_training_step_equals_a_static_one_at_every_size(gpt, traces):
    twin = copy.deepcopy(gpt)
    step = graphgpt.compile(gpt, tokens(2, 16), tokens(2, 16, seed=1), loss=F.cross_entropy,
                            optimizer=graphgpt.optim.Adam(lr=1e-3), dynamic=True)
    twin_optimizer = graphgpt.optim.Adam(lr=1e-3)
    for batch, length in SIZES[:4]:
        inputs, targets = tokens(batch, length), tokens(batch, length, seed=1)
        static = graphgpt.compile(twin, inputs, targets, loss=F.cross_entropy, optimizer=twin_optimizer)
        assert float(step(inputs, targets)) == float(static(inputs, targets))
        for (name, mine), (_, theirs) in zip(gpt.named_parameters(), twin.named_parameters()):
            np.testing.assert_array_equal(mine.data, theirs.data, err_msg=name)
    assert traces == {"forward": 0, "training step": 1 + 4}  # the dynamic step once, the static twin per size
    # the loss's 1 / (B T) is counted from the targets at run time, never a size baked in at tracing
    assert step.graph.op_counts()["cross_entropy_grad"] == 1


def test_report_and_memory_are_measured_at_the_latest_size(gpt):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    fwd(tokens(3, 31))
    report = fwd.report()
    assert "measured at B=3, T=31" in report and "T <= 64" in report
    assert fwd.planned_bytes > 0 and fwd.memory_timeline().peak_bytes > 0


def test_threads_running_several_sizes_get_their_own_answers(gpt):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    expected = {size: gpt(graphgpt.Tensor(tokens(*size))).data for size in SIZES}
    failures = []

    def worker(offset):
        for index in range(12):
            size = SIZES[(index + offset) % len(SIZES)]
            if not np.array_equal(fwd(tokens(*size)), expected[size]):
                failures.append(size)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_bad_dynamic_options_are_refused(gpt):
    with pytest.raises(ValueError, match=r"dynamic= takes None \(automatic\), False, True or names from"):
        graphgpt.compile(gpt, tokens(2, 16), dynamic="time")
    with pytest.raises(ValueError, match="no input has that axis"):
        graphgpt.compile(lambda x: x * 2.0, np.ones(3, np.float32), dynamic="seq")


def test_model_code_needing_a_number_specialises_under_a_guard():
    def positions(x):  # np.arange needs a number: int() takes the example's under a guard
        return x + graphgpt.Tensor(np.arange(int(x.shape[1]), dtype=np.float32))

    fwd = graphgpt.compile(positions, np.ones((2, 5), np.float32), dynamic=True)
    assert [str(guard).split(" (")[0] for guard in fwd.shape_env.guards] == ["T == 5"]
    np.testing.assert_array_equal(fwd(np.ones((4, 5), np.float32)), np.ones((4, 5)) + np.arange(5))
    with pytest.raises(SymbolicShapeError, match=r"T / 2 is not a size"):
        graphgpt.compile(lambda x: x + graphgpt.Tensor(np.arange(x.shape[1] / 2)), np.ones((2, 4)), dynamic=True)
    with pytest.raises(graphgpt.InputError, match=r"guard T == 5 .* fails at B=2, T=6"):
        fwd(np.ones((2, 6), np.float32))


# ---- the algebra of sizes -----------------------------------------------------------------------------------


def test_sizes_are_polynomials_that_print_and_parse_back():
    assert str(B * T * 64) == "64*B*T" and str(2 * T + 1) == "2*T+1" and str(T - 1) == "T-1"
    assert B * T - T * B == 0 and isinstance(B * T - T * B, int)
    for size in (B, B * T * 64, 2 * T + 1, T - 1, B * B, 7):
        assert same_shape((parse_size(str(size)),), (size,))
    assert str(TensorType.parse("f32[B,T,64]")) == "f32[B,T,64]"
    for bad in ("B+", "2**T", "B;T", "__import__('os')", ""):
        with pytest.raises(ShapeError):
            parse_size(bad)


def test_questions_settled_by_bounds_need_no_guard():
    assert decide(T, ">=", 1) and decide(B * T, ">", 0) and not decide(T, "==", 0) and decide(-T, "<", 0)
    assert not same_shape((B,), (1,))
    for question in ((T, "<=", 64), (B, "==", 1), (B, "==", T)):
        with pytest.raises(SymbolicShapeError, match="cannot decide"):
            decide(*question)


def test_guards_take_the_example_and_are_checked_later():
    env = ShapeEnv({"B": 2, "T": 16})
    with shape_env(env):
        assert decide(T, "<=", 64) and not decide(B, "==", 1)
    assert [str(guard) for guard in env.guards] == ["T <= 64", "B != 1"]
    assert env.failing_guard({"B": 1, "T": 3}) is not None and env.failing_guard({"B": 3, "T": 64}) is None


def test_exact_division_only():
    assert same_shape((exact_quotient(B * T * 64, B * 4),), (16 * T,))
    assert exact_quotient(B * T, 2) is None and exact_quotient(B + 1, B) is None and exact_quotient(12, 5) is None
    with pytest.raises(SymbolicShapeError):
        B // 2


def test_the_ir_may_not_turn_a_symbol_into_a_number():
    with pytest.raises(SymbolicShapeError, match="has no one number"):
        int(B * T)


def test_specialising_a_symbolic_graph_equals_tracing_at_that_size(gpt):
    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    concrete = specialize_graph(fwd.graph, {"B": 3, "T": 9})
    traced = graphgpt.compile(gpt, tokens(3, 9)).graph
    assert [str(value.type) for value in concrete.outputs] == [str(value.type) for value in traced.outputs]
    assert all(not value.type.is_symbolic for value in concrete.values())


def test_a_symbolic_batch_splits_where_it_divides_and_runs_whole_where_not(gpt):
    twin = copy.deepcopy(gpt)
    step = graphgpt.compile(gpt, tokens(4, 16), tokens(4, 16, seed=1), loss=F.cross_entropy,
                            optimizer=graphgpt.optim.Adam(lr=1e-3), dynamic=True, shards=2)
    assert list(step.graphs) == ["shard (batch B of 2*B)", "combine"] and step.split.shards == 2
    twin_optimizer = graphgpt.optim.Adam(lr=1e-3)
    for batch, length, shards in [(4, 16, 2), (3, 20, 1), (6, 31, 2), (2, 8, 2)]:
        inputs, targets = tokens(batch, length), tokens(batch, length, seed=1)
        static = graphgpt.compile(twin, inputs, targets, loss=F.cross_entropy, optimizer=twin_optimizer,
                                  shards=shards)
        assert float(step(inputs, targets)) == float(static(inputs, targets))
        assert step.specializations.get({"B": batch, "T": length}).split.shards == shards
        for (name, mine), (_, theirs) in zip(gpt.named_parameters(), twin.named_parameters()):
            np.testing.assert_array_equal(mine.data, theirs.data, err_msg=name)


def test_shape_inference_on_symbols_sums_products_and_reshape():
    def program(x):  # x: (B, T, 8)
        joined = x.concat(x, axis=1)                      # (B, 2*T, 8)
        flat = joined.reshape(-1, 4)                      # (4*B*T, 4)
        return flat.sum(0) + joined.reshape(x.shape[0], -1).mean(-1, keepdims=True).sum()

    fwd = graphgpt.compile(program, np.ones((2, 3, 8), np.float32), dynamic=True)
    text = str(fwd.graph)
    assert "f32[B,2*T,8] = concat" in text and "f32[4*B*T,4] = reshape" in text
    for batch, length in [(1, 1), (3, 5)]:
        x = np.random.default_rng(length).standard_normal((batch, length, 8)).astype(np.float32)
        np.testing.assert_array_equal(fwd(x), program(graphgpt.Tensor(x)).data)


def test_the_verifier_checks_symbolic_types():
    from graphgpt.ir import GraphBuilder, VerificationError, verify

    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((B, T), "float32"))
    y = builder.add_node("transpose", [x], {"perm": (1, 0)})
    graph = builder.finish([y])
    assert verify(graph) is graph and str(y.type) == "f32[T,B]"
    y.type = TensorType((B, T), "float32")  # recorded unlike the rule infers
    with pytest.raises(VerificationError, match=r"infers f32\[T,B\]"):
        verify(graph)


def test_graph_files_hold_concrete_sizes(gpt, tmp_path):
    from graphgpt.ir import SerializationError, graph_from_json, graph_to_json

    fwd = graphgpt.compile(gpt, tokens(2, 16), dynamic=True)
    with pytest.raises(SerializationError, match="has symbolic sizes; graph files hold concrete ones"):
        graph_to_json(fwd.graph)
    concrete = specialize_graph(fwd.graph, {"B": 2, "T": 5})
    assert str(graph_from_json(graph_to_json(concrete))) == str(concrete)


def test_plans_past_the_limit_are_dropped_least_recently_used_and_said_so(gpt, recompile_explanations, capsys):
    recompile_explanations(True)
    fwd = graphgpt.compile(gpt, tokens(1, 4), dynamic=True)
    for length in range(1, 11):  # ten sizes, eight kept
        fwd(tokens(1, length))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"graphgpt: dropping the plan for sizes B=1, T={length} of a symbolic compile (least recently "
                     f"used; 8 kept)" for length in (1, 2)]
    np.testing.assert_array_equal(fwd(tokens(1, 1)), gpt(graphgpt.Tensor(tokens(1, 1))).data)  # planned again
