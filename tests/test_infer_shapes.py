"""The shape-inference pass: it re-derives every type from the op rules alone, leaves its input graph untouched,
re-specialises a graph to new input shapes, and names the node whose rule refuses them."""

import numpy as np
import pytest

import graphgpt
from graphgpt.passes.schedule import Schedule
from graphgpt.ir import GraphBuilder, TensorType, format_graph, verify
from graphgpt.passes import infer_shapes
from conftest import make_gpt, make_tokens


def test_types_come_from_the_rules_alone():
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((2, 3), "float32"))
    w = builder.add_param("w", TensorType((3, 5), "float32"))
    y = builder.add_node("matmul", [x, w])
    s = builder.add_node("sum", [y], {"axes": (1,), "keepdims": False})
    graph = builder.finish([s])
    # Scramble the recorded types: the pass must not read them.
    y.type = TensorType((9, 9), "float64")
    s.type = TensorType((), "int32")
    typed = infer_shapes(graph)
    assert [str(node.output.type) for node in typed.nodes] == ["f32[2,5]", "f32[2]"]
    assert graph.nodes[0].output.type == TensorType((9, 9), "float64")  # input graph untouched
    verify(typed)


def test_gpt_graph_is_a_fixed_point_and_respecialises():
    model = make_gpt(max_seq_len=16)
    fwd = graphgpt.compile(model, make_tokens(17, 2, 8))
    def body(graph):  # the text without its header line, which names the pass that made the graph
        return format_graph(graph).split("\n", 1)[1]

    assert body(infer_shapes(fwd.graph)) == body(fwd.graph)
    # A different batch size re-specialises: reshape attributes carry batch sizes, so the pass must refuse and
    # say which node's rule does.
    with pytest.raises(graphgpt.ShapeError, match=r"(?s)reshape.*at blocks\.0\.attention"):
        infer_shapes(fwd.graph, [TensorType((3, 8), "int64")])


def test_respecialising_a_shape_polymorphic_graph_runs():
    def function(x, w):
        return (x @ w).gelu().sum(axis=-1)

    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    graph = graphgpt.compile(function, x, w).graph
    wider = infer_shapes(graph, [TensorType((7, 3), "float32"), TensorType((3, 4), "float32")])
    assert str(wider.outputs[0].type) == "f32[7]"
    out = Schedule(wider).run([np.ones((7, 3), np.float32), w], [])[0]
    np.testing.assert_allclose(out, function(graphgpt.Tensor(np.ones((7, 3), np.float32)),
                                             graphgpt.Tensor(w)).data)


def test_wrong_number_of_input_types():
    graph = graphgpt.compile(lambda x: x * 2, np.ones(3, np.float32)).graph
    with pytest.raises(graphgpt.ShapeError, match="1 inputs, got 2"):
        infer_shapes(graph, [TensorType((3,), "float32")] * 2)
