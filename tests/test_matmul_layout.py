"""passes/matmul_layout.py: a batched matmul read only through a transpose keeping the last axis last is written
in the transposed layout (matmul_permuted), so attention's head merges are views, not copies; the same bits."""

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.nn import functional as F
from graphgpt.passes.manager import DEFAULT_PIPELINE
from graphgpt.passes.matmul_layout import write_matmuls_permuted
from graphgpt.passes.memory_plan import plan_memory
from graphgpt.passes.numba_backend import numba_available
from graphgpt.passes.schedule import Schedule

from conftest import make_gpt, make_tokens

WITHOUT = [name for name in DEFAULT_PIPELINE if name != "write_matmuls_permuted"]
BACKENDS = ["numpy"] + (["numba"] if numba_available() else [])


def training_step(backend, passes=None):
    model = make_gpt(vocab=17, embed=12, heads=3)
    tokens, targets = make_tokens(17, 4, 8, seed=1), make_tokens(17, 4, 8, seed=2)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, backend=backend, passes=passes,
                            optimizer=graphgpt.optim.AdamW(lr=1e-2))
    return step, model, tokens, targets


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_gpt_step_merges_heads_without_copies_and_gives_the_same_bits(backend):
    step, model, tokens, targets = training_step(backend)
    reference, reference_model, _, _ = training_step(backend, passes=WITHOUT)
    graph = step.program.graphs[0].graph
    permuted = [node for node in graph.nodes if node.op == "matmul_permuted"]
    assert len(permuted) >= 2 * 2  # each layer's head merge forward and at least one backward
    plan = plan_memory(graph)
    users = graph.users()
    for node in permuted:  # the reshape merging the heads reads it as a view now
        assert all(plan.storage[user.output.id].kind == "view" for user in users[node.output.id]
                   if user.op == "reshape")
    unrewritten = reference.program.graphs[0].graph
    unrewritten_plan = plan_memory(unrewritten)
    copies = [node for node in unrewritten.nodes
              if node.op == "reshape" and unrewritten_plan.storage[node.output.id].kind == "buffer"]
    assert len(copies) >= len(permuted)  # what the rewrite saved
    for _ in range(3):
        np.testing.assert_array_equal(step.run(tokens, targets), reference.run(tokens, targets))
    for (name, parameter), (_, other) in zip(model.named_parameters(), reference_model.named_parameters()):
        np.testing.assert_array_equal(parameter.data, other.data, err_msg=name)


def product_then_transpose(a_shape, b_shape, perm, also_read=False):
    builder = GraphBuilder()
    a = builder.add_input("a", TensorType(a_shape, "float32"))
    b = builder.add_input("b", TensorType(b_shape, "float32"))
    product = builder.add_node("matmul", [a, b])
    turned = builder.add_node("transpose", [product], {"perm": perm})
    outputs = [turned, builder.add_node("exp", [product])] if also_read else [turned]
    return builder.finish(outputs)


def test_a_product_read_only_through_the_transpose_is_rewritten_exactly():
    graph = product_then_transpose((2, 3, 4, 5), (2, 3, 5, 6), (0, 2, 1, 3))
    result = write_matmuls_permuted(graph)
    assert result.summary == {"matmuls written permuted": 1}
    assert [node.op for node in result.graph.nodes] == ["matmul_permuted"]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4, 5), dtype=np.float32), rng.standard_normal((2, 3, 5, 6), dtype=np.float32)
    np.testing.assert_array_equal(Schedule(result.graph).run([a, b], [])[0],
                                  Schedule(graph).run([a, b], [])[0])


@pytest.mark.parametrize("a_shape, b_shape, perm, also_read", [
    ((2, 3, 4, 5), (2, 3, 5, 6), (0, 2, 1, 3), True),    # the product is also read as it is
    ((2, 3, 4, 5), (2, 3, 5, 6), (0, 1, 3, 2), False),   # the last axis moves: its rows would be columns
    ((2, 4, 5), (5, 6), (1, 0, 2), False),               # a batch times one matrix: one GEMM over all rows
])
def test_other_products_are_left_alone(a_shape, b_shape, perm, also_read):
    graph = product_then_transpose(a_shape, b_shape, perm, also_read)
    result = write_matmuls_permuted(graph)
    assert result.summary == {"matmuls written permuted": 0}
    assert [node.op for node in result.graph.nodes] == [node.op for node in graph.nodes]
