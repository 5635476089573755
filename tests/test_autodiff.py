"""Generated gradients: the backward graph and the eager tape against float64 central differences on GPTs of odd
shapes, backward provenance, fan-out and integer inputs, and the checker's ability to find a broken rule."""

import dataclasses

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import OPS, GraphError
from graphgpt.nn import functional as F
from graphgpt.passes.autodiff import append_backward
from conftest import make_gpt, make_tokens

# (vocab, embed, layers, heads, batch, seq_len): 3 heads, lengths that are not powers of two, batch 1.
GPT_CONFIGS = [(7, 6, 2, 3, 1, 5), (9, 8, 2, 2, 2, 3), (5, 9, 2, 3, 2, 7)]


def randomised_gpt(vocab, embed, layers, heads, seed=0):
    """Weights of unit-ish scale so no gradient sits at the noise floor by accident."""
    model = make_gpt(vocab, embed, layers, heads, max_seq_len=8, seed=seed)
    rng = np.random.default_rng(seed)
    for parameter in model.parameters():
        parameter.data[...] = rng.normal(0, 0.5, parameter.shape)
    return model


@pytest.mark.parametrize("through", ["graph", "eager"])
@pytest.mark.parametrize("vocab,embed,layers,heads,batch,seq_len", GPT_CONFIGS)
def test_every_gpt_parameter_matches_central_differences(vocab, embed, layers, heads, batch, seq_len, through):
    model = randomised_gpt(vocab, embed, layers, heads)
    tokens, targets = make_tokens(vocab, batch, seq_len), make_tokens(vocab, batch, seq_len, seed=1)
    report = graphgpt.check_gradients(model, tokens, targets, loss=F.cross_entropy, through=through)
    assert {check.name for check in report.parameters} == {name for name, _ in model.named_parameters()}
    assert all(check.elements_checked == check.elements_total for check in report.parameters)
    assert report.passed, str(report)
    assert report.worst.relative_error < 1e-6


def test_compiled_and_eager_float32_gradients_agree():
    """Unoptimised, the graph runs the tape's very kernels in the tape's order: equal to the bit. The optimised
    graph rounds differently (rewritten arithmetic) and agrees to float32 precision."""
    model = make_gpt()
    tokens, targets = make_tokens(17, 2, 8), make_tokens(17, 2, 8, seed=1)
    eager_loss = F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets))
    eager_loss.backward()
    for passes in ([], None):
        step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=passes)
        compiled_loss = step.run(tokens, targets)
        assert compiled_loss.shape == () and set(step.grads) == {name for name, _ in model.named_parameters()}
        for name, parameter in model.named_parameters():
            assert step.grads[name].dtype == np.float32
            if passes == []:
                np.testing.assert_array_equal(step.grads[name], parameter.grad, err_msg=name)
            else:
                np.testing.assert_allclose(step.grads[name], parameter.grad, rtol=1e-4, atol=1e-6, err_msg=name)
        if passes == []:
            assert float(compiled_loss) == float(eager_loss.data)
        else:
            np.testing.assert_allclose(compiled_loss, eager_loss.data, rtol=1e-6)


def test_backward_nodes_name_the_forward_node_they_differentiate():
    model = make_gpt()
    tokens = make_tokens(17, 2, 8)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy)
    # Passes keep value ids (a rewritten value keeps its id), so the names refer to the traced graph's nodes
    # even after optimisation merged or removed some of them.
    traced = step.stages[0].graph
    forward = {node.output.id: node for node in traced.nodes if node.provenance.differentiates is None}
    graph = step.graph
    backward = [node for node in graph.nodes if node.provenance.differentiates is not None]
    assert len(backward) > len(forward)
    loss_id = graph.outputs[0].id
    for node in backward:
        target = node.provenance.differentiates
        assert target in forward, node.describe()
        if target != loss_id:
            assert node.provenance.module_path == forward[target].provenance.module_path
    text = str(graph)
    assert "# grad of %" in text and "blocks.1.mlp.linear1" in text
    differentiated = {forward[node.provenance.differentiates].op for node in backward}
    assert {"gelu", "layer_norm", "softmax", "matmul", "embedding", "cross_entropy"} <= differentiated


def test_fan_out_gradients_are_summed():
    def function(x):
        return (x * x + x.exp() + x).sum()  # x read four times

    x = np.array([0.5, -1.0, 2.0])
    report = graphgpt.check_gradients(function, x)
    assert report.passed, str(report)
    graph = append_backward(graphgpt.trace(function, x).graph, ["x"]).graph
    from graphgpt.passes.schedule import Schedule
    _, gradient = Schedule(graph).run([x], [])
    np.testing.assert_allclose(gradient, 2 * x + np.exp(x) + 1, rtol=1e-12)


def test_unused_parameter_gets_a_zero_gradient_and_integers_none():
    class PartlyUsed(graphgpt.nn.Module):
        def __init__(self):
            self.used = graphgpt.nn.Parameter(np.ones((4, 2), np.float32))
            self.unused = graphgpt.nn.Parameter(np.ones(3, np.float32))

        def forward(self, indices):
            return F.embedding(self.used, indices)

    model = PartlyUsed()
    indices = np.array([[0, 2, 2]])
    step = graphgpt.compile(model, indices, np.zeros((1, 3), np.int64),
                            loss=lambda out, target: (out * out).sum() + target.astype("float32").sum())
    step.run(indices, np.zeros((1, 3), np.int64))
    np.testing.assert_array_equal(step.grads["unused"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(step.grads["used"], [[2, 2], [0, 0], [4, 4], [0, 0]])  # repeated row adds
    with pytest.raises(GraphError, match="only float values have gradients"):
        append_backward(step.graph, ["indices"])


def test_non_scalar_loss_is_refused():
    graph = graphgpt.trace(lambda x: x * 2, np.ones(3)).graph
    with pytest.raises(GraphError, match="loss must be a float scalar, got f64\\[3\\]"):
        append_backward(graph, ["x"])
    with pytest.raises(GraphError, match="not inputs or parameters"):
        append_backward(graphgpt.trace(lambda x: x.sum(), np.ones(3)).graph, ["y"])


def test_checker_names_the_first_diverging_node(monkeypatch):
    good = OPS["gelu"]
    broken = dataclasses.replace(good, vjp=lambda g, out, x: (lambda: good.vjp(g, out, x)[0]() * 1.01,))
    monkeypatch.setitem(OPS, "gelu", broken)
    model = randomised_gpt(7, 6, 2, 3)
    tokens = make_tokens(7, 1, 5)
    report = graphgpt.check_gradients(model, tokens, tokens, loss=F.cross_entropy)
    assert not report.passed
    assert "blocks.1.mlp.linear1" in report.first_divergent_node and "gelu" in report.first_divergent_node
    assert "FAILED" in str(report) and "above tolerance" in str(report)


def test_checker_leaves_the_callers_model_untouched():
    model = make_gpt()
    before = model.state_dict()
    graphgpt.check_gradients(model, make_tokens(17, 1, 3), make_tokens(17, 1, 3), loss=F.cross_entropy,
                             max_elements=3)
    assert all(p.dtype == "float32" for p in model.parameters())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_backward_accumulates_and_zero_grad_clears():
    model = make_gpt()
    tokens = make_tokens(17, 1, 4)

    def loss():
        return F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens))

    loss().backward()
    once = model.lm_head.weight.grad.copy()
    loss().backward()
    np.testing.assert_allclose(model.lm_head.weight.grad, 2 * once, rtol=1e-6)
    optimizer = graphgpt.optim.SGD(model.named_parameters(), lr=0.1)
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    loss().backward()
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(graphgpt.ShapeError, match=r"non-scalar f32\[1,4,17\] needs gradient= of shape \(1, 4, 17\)"):
        model(graphgpt.Tensor(tokens)).backward()
