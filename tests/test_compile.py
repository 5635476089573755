"""graphgpt.compile and run: the API, no retrace for new data, live parameters, and every error a user can meet
(wrong input shape, dtype or count; data-dependent control flow; shape errors pointing at the user's line)."""

import numpy as np
import pytest

import graphgpt
from graphgpt import nn
from graphgpt.passes.manager import DEFAULT_PIPELINE
from conftest import make_tokens


def test_compile_returns_runnable_graph(small_gpt):
    tokens = make_tokens(17, 2, 8)
    fwd = graphgpt.compile(small_gpt, tokens)
    assert isinstance(fwd.graph, graphgpt.ir.Graph)
    text = str(fwd.graph)
    assert "%tokens:i64[2,8]" in text and "%blocks.1.attention.q_proj.weight:f32[12,12]" in text
    assert "layer_norm" in text and "# blocks.0.attention.q_proj" in text
    np.testing.assert_array_equal(fwd.run(tokens), fwd(tokens))
    assert fwd.graph.header == DEFAULT_PIPELINE[-1]  # the graph made by the last pass
    assert [stage.name for stage in fwd.stages][0] == "input" and "nodes" in fwd.report()
    assert graphgpt.compile(small_gpt, tokens, passes=[]).graph.header == "infer_shapes"
    assert [v.name for v in fwd.graph.inputs] == ["tokens"]


def test_new_data_of_same_shape_needs_no_retrace(small_gpt, monkeypatch):
    tokens = make_tokens(17, 2, 8)
    fwd = graphgpt.compile(small_gpt, tokens)

    def no_tracing(*args, **kwargs):
        raise AssertionError("run() must not trace again")

    monkeypatch.setattr(nn.GPT, "forward", no_tracing)
    other = make_tokens(17, 2, 8, seed=5)
    out = fwd.run(other)
    monkeypatch.undo()
    np.testing.assert_allclose(out, small_gpt(graphgpt.Tensor(other)).data, rtol=1e-6, atol=1e-6)


def test_run_reads_parameters_live(small_gpt):
    tokens = make_tokens(17, 2, 8)
    fwd = graphgpt.compile(small_gpt, tokens)
    before = fwd.run(tokens)
    small_gpt.lm_head.weight.data[...] *= 2
    np.testing.assert_allclose(fwd.run(tokens), 2 * before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,expected", [
    (np.zeros((2, 9), np.int64), r"expected i64\[2,8\], got i64\[2,9\]"),
    (np.zeros((2, 8), np.int32), r"expected i64\[2,8\], got i32\[2,8\]"),
    (np.zeros((8,), np.int64), r"expected i64\[2,8\], got i64\[8\]"),
    (np.zeros((2, 8), np.complex64), r"expected i64\[2,8\], got an array of dtype complex64"),
])
def test_run_refuses_wrong_shape_or_dtype(small_gpt, bad, expected):
    fwd = graphgpt.compile(small_gpt, make_tokens(17, 2, 8))
    with pytest.raises(graphgpt.InputError, match=expected) as caught:
        fwd.run(bad)
    assert "'tokens'" in str(caught.value) and "compile again" in str(caught.value)


def test_run_refuses_wrong_number_of_inputs(small_gpt):
    tokens = make_tokens(17, 2, 8)
    fwd = graphgpt.compile(small_gpt, tokens)
    with pytest.raises(graphgpt.InputError, match=r"takes 1 input\(s\) \(tokens: i64\[2,8\]\), got 2"):
        fwd.run(tokens, tokens)


def test_out_of_range_token_names_the_node(small_gpt):
    fwd = graphgpt.compile(small_gpt, make_tokens(17, 1, 4))
    with pytest.raises(graphgpt.ExecutionError, match=r"\(embedding\) at token_embedding .*out of range"):
        fwd.run(np.array([[1, 2, 17, 3]]))


def test_compile_without_example_inputs_is_lazy(small_gpt):
    fwd = graphgpt.compile(small_gpt)  # traces at its first call's inputs (tests/test_lazy_compile.py)
    assert isinstance(fwd, graphgpt.LazyCompiled) and len(fwd.cache) == 0


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent branch: cannot be a static graph
            return x * 2
        return x


def test_data_dependent_control_flow_raises_trace_error_naming_the_line():
    with pytest.raises(graphgpt.TraceError) as caught:
        graphgpt.compile(DataDependent(), np.ones((2, 3), np.float32))
    message = str(caught.value)
    assert "test_compile.py:" in message and "Python control flow" in message and "where" in message
    line = int(message.split("test_compile.py:")[1].split()[0].rstrip(":"))
    source = open(__file__).read().splitlines()[line - 1]
    assert "if x.sum() > 0" in source


@pytest.mark.parametrize("escape", [float, int, lambda t: t.item(), lambda t: np.asarray(t), lambda t: t.data])
def test_reading_a_traced_value_raises_trace_error(escape):
    def function(x):
        escape(x.sum())
        return x

    with pytest.raises(graphgpt.TraceError, match="traced tensor"):
        graphgpt.compile(function, np.ones((2,), np.float32))


def test_plain_function_with_several_outputs():
    def function(a, b):
        return a @ b, (a * 2).sum(axis=-1)

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 4), np.float32)
    compiled = graphgpt.compile(function, a, b)
    product, sums = compiled.run(a, b)
    np.testing.assert_allclose(product, a @ b)
    np.testing.assert_allclose(sums, (a * 2).sum(-1))
    assert [v.name for v in compiled.graph.inputs] == ["a", "b"]


class BadShapes(nn.Module):
    def __init__(self):
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(x)


def test_shape_error_names_module_and_line_when_traced_and_eager():
    model = BadShapes()
    with pytest.raises(graphgpt.ShapeError) as traced:
        graphgpt.compile(model, np.ones((2, 5), np.float32))
    with pytest.raises(graphgpt.ShapeError) as eager:
        model(graphgpt.Tensor(np.ones((2, 5), np.float32)))
    for caught in (traced, eager):
        message = str(caught.value)
        assert "matmul" in message and "f32[2,5] @ f32[4,3]" in message
        assert "at proj (" in message and "layers.py:" in message


def test_dtype_mismatch_is_an_error_not_a_silent_promotion():
    x = graphgpt.Tensor(np.ones(3, np.float32))
    with pytest.raises(graphgpt.ShapeError, match=r"f32\[3\], f64\[3\].*astype"):
        x + np.ones(3, np.float64)
    assert (x + 1.5).dtype == "float32"  # Python scalars take the tensor's dtype


def test_traced_tensor_cannot_escape_into_eager_code():
    kept = []

    def function(x):
        kept.append(x * 2)
        return x

    graphgpt.compile(function, np.ones(2, np.float32))
    with pytest.raises(graphgpt.TraceError, match="escaped its trace"):
        kept[0] + 1


def test_scalar_inputs_run():
    compiled = graphgpt.compile(lambda a, b: a * b + 1.0, np.float32(2), np.ones(3, np.float32))
    np.testing.assert_array_equal(compiled.run(np.float32(3), np.ones(3, np.float32)), [4, 4, 4])
