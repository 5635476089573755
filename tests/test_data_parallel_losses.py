"""The data-parallel proof over losses built from batch means, batch sums and batch-independent terms: each loss
either splits with the whole batch's loss and gradients (float64: the loss within 1e-12, each gradient within 1e-12
of the size of the terms it sums), or is refused naming the node.

A loss splits exactly when it is linear in its batch reductions with batch-independent coefficients (the shards'
scaled losses then add up to it); a product or quotient of two reductions, or a function of one, does not. The
expected verdict is computed here from the expression, independently of the proof, and the numbers decide
whether an accepted split is exact."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphgpt
from graphgpt.nn import functional as F

from conftest import make_tokens

VOCAB, BATCH, SEQ = 5, 4, 3
LINEAR, INDEPENDENT, NONLINEAR = "linear", "independent", "nonlinear"


class TinyModel(graphgpt.nn.Module):
    """Embedding then a linear head: enough for per-example logits, fast to compile."""

    def __init__(self):
        graphgpt.manual_seed(3)
        self.embedding = graphgpt.nn.Embedding(VOCAB, 4)
        self.head = graphgpt.nn.Linear(4, VOCAB)

    def forward(self, tokens):
        return self.head(self.embedding(tokens))


# Leaves: (name, class, builder(logits, targets, model) -> scalar Tensor).
LEAVES = {
    "mean": (LINEAR, lambda logits, targets, model: F.cross_entropy(logits, targets)),
    "sum": (LINEAR, lambda logits, targets, model: (logits * logits).sum() * 0.01),
    "row-mean": (LINEAR, lambda logits, targets, model: logits.mean(axis=0).sum()),
    "weight": (INDEPENDENT, lambda logits, targets, model: (model.head.weight * model.head.weight).sum() + 1.0),
    "const": (INDEPENDENT, lambda logits, targets, model: graphgpt.Tensor(3.0, dtype="float64")),
}


def combine(op, left, right):
    """The class of `left op right` (right None for unary ops): the specification the proof must meet."""
    if NONLINEAR in (left, right):
        return NONLINEAR
    if op in ("neg", "scale"):
        return left
    if op in ("+", "-"):
        return LINEAR if LINEAR in (left, right) else INDEPENDENT
    if op == "*":
        return NONLINEAR if (left, right) == (LINEAR, LINEAR) else (LINEAR if LINEAR in (left, right) else INDEPENDENT)
    # "/": only a batch-independent denominator keeps it linear
    return NONLINEAR if right == LINEAR else left


def apply(op, left, right):
    return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
            "/": lambda: left / right, "neg": lambda: -left, "scale": lambda: left * 0.75}[op]()


# An expression: a leaf name, or (op, expression[, expression]).
def evaluate(expression, logits, targets, model):
    if isinstance(expression, str):
        return LEAVES[expression][1](logits, targets, model)
    op, *operands = expression
    values = [evaluate(operand, logits, targets, model) for operand in operands]
    return apply(op, values[0], values[1] if len(values) > 1 else None)


def classify(expression):
    if isinstance(expression, str):
        return LEAVES[expression][0]
    op, *operands = expression
    classes = [classify(operand) for operand in operands]
    return combine(op, classes[0], classes[1] if len(classes) > 1 else None)


def leaf_occurrences(expression) -> list[str]:
    """The leaves of `expression` in evaluation order, each as often as it occurs."""
    if isinstance(expression, str):
        return [expression]
    return [leaf for operand in expression[1:] for leaf in leaf_occurrences(operand)]


def terms_scales(expression, model, tokens, targets) -> tuple[float, dict[str, float]]:
    """The size of the terms the loss and each gradient are sums of, computed eagerly: for the loss, sum over the
    leaf occurrences of |dloss/dleaf| |leaf|; per parameter, the largest element of sum over them of |dloss/dleaf|
    |dleaf/dparameter| (chain rule). Rounding errs relative to them, not to the result, which may be much smaller
    where they cancel: (sum + weight) / weight's gradient is a difference of two terms ~1e4 times its size, and
    -(0.75 const) + 0.75 (const + sum) a loss ~1e-4 of its terms."""
    leaves = leaf_occurrences(expression)
    values, leaf_gradients = [], []
    for name in leaves:
        for parameter in model.parameters():
            parameter.grad = None
        value = LEAVES[name][1](model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets), model)
        if value.requires_grad:
            value.backward()
        values.append(float(value.data))
        leaf_gradients.append({name: (np.zeros(parameter.shape) if parameter.grad is None else parameter.grad.copy())
                               for name, parameter in model.named_parameters()})
    handles = iter([graphgpt.Tensor(value, requires_grad=True, dtype="float64") for value in values])
    scalars = []

    def substitute(node):  # the expression over scalar leaves, each occurrence its own
        if isinstance(node, str):
            scalars.append(next(handles))
            return scalars[-1]
        op, *operands = node
        operands = [substitute(operand) for operand in operands]
        return apply(op, operands[0], operands[1] if len(operands) > 1 else None)

    substitute(expression).backward()
    loss_scale = sum(abs(float(scalar.grad)) * abs(value) for scalar, value in zip(scalars, values))
    scale = {}
    for name, _ in model.named_parameters():
        terms = sum(np.abs(float(scalar.grad)) * np.abs(gradients[name])
                    for scalar, gradients in zip(scalars, leaf_gradients))
        scale[name] = float(np.max(terms))
    return loss_scale, scale


def check_loss(expression):
    model = TinyModel().to("float64")
    tokens, targets = make_tokens(VOCAB, BATCH, SEQ, seed=1), make_tokens(VOCAB, BATCH, SEQ, seed=2)

    def loss(logits, targets):
        return evaluate(expression, logits, targets, model)

    whole = graphgpt.compile(model, tokens, targets, loss=loss, shards=1)
    expected_loss = whole.run(tokens, targets)
    expected_grads = {name: gradient.copy() for name, gradient in whole.grads.items()}
    if classify(expression) != LINEAR:
        with pytest.raises(ValueError, match=r"cannot split this training step into 2 .*(node %|the loss)"):
            graphgpt.compile(model, tokens, targets, loss=loss, shards=2)
        return
    split = graphgpt.compile(model, tokens, targets, loss=loss, shards=2)
    assert split.split.shards == 2
    loss_scale, scale = terms_scales(expression, model, tokens, targets)
    # within 1e-12 of the size of the terms summed into the loss (at least of the loss itself)
    size = max(loss_scale, abs(float(expected_loss))) + 1e-300
    np.testing.assert_allclose(split.run(tokens, targets) / size, expected_loss / size, rtol=0, atol=1e-12)
    for name, gradient in expected_grads.items():
        # within 1e-12 of the size of the terms summed into the gradient (at least of the gradient itself)
        size = max(scale[name], np.abs(gradient).max()) + 1e-300
        np.testing.assert_allclose(split.grads[name] / size, gradient / size, rtol=0, atol=1e-12, err_msg=name)


EXPLICIT = [
    ("+", "mean", "sum"), ("-", "mean", "sum"), ("-", "sum", "mean"), ("*", "mean", "sum"), ("/", "mean", "sum"),
    ("/", "sum", "mean"), ("*", "mean", "mean"), ("neg", "mean"), ("scale", "sum"), ("+", "mean", "weight"),
    ("-", "weight", "sum"), ("*", "weight", "mean"), ("/", "mean", "weight"), ("/", "weight", "mean"),
    ("+", "mean", "const"), ("+", "sum", "const"), ("*", ("+", "mean", "sum"), "weight"),
    ("+", ("*", "mean", "const"), ("neg", ("/", "sum", "weight"))), ("*", ("+", "mean", "weight"), "sum"),
    ("-", ("scale", "row-mean"), ("+", "sum", "const")), ("+", "weight", "const"),
    ("+", ("neg", ("scale", "const")), ("scale", ("+", "const", "sum"))),  # a loss ~1e-4 of its terms
]


@pytest.mark.parametrize("expression", EXPLICIT, ids=str)
def test_each_combination_splits_exactly_or_is_refused(expression):
    check_loss(expression)


def expressions():
    leaves = st.sampled_from(sorted(LEAVES))
    return st.recursive(leaves, lambda children: st.one_of(
        st.tuples(st.sampled_from(["+", "-", "*", "/"]), children, children),
        st.tuples(st.sampled_from(["neg", "scale"]), children)), max_leaves=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_random_losses_split_exactly_or_are_refused(expression):
    check_loss(expression)
