"""Every op's gradient rule against float64 central differences, through the generated graph and the eager tape.

Each differentiable op has a row: inputs (float ones are differentiated, integer ones are held) and attributes.
The objective is sum(op(inputs) * R) for a fixed random R, so the whole vector-Jacobian product is checked,
not only a sum. Ops whose result carries no gradient (bool, integer or constant results) are listed apart, and
their rules must say so (None for every input)."""

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import OPS, GraphError, TensorType, get_op

RNG = np.random.default_rng(0)


def normal(*shape):
    return RNG.normal(size=shape)


def positive(*shape):
    return RNG.uniform(0.5, 2.0, size=shape)


def distinct(*shape):
    """Values with no ties (max and maximum have no derivative at a tie)."""
    return RNG.permutation(np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape) * 0.1


CASES = {  # op -> list of (inputs, attrs)
    "neg": [([normal(2, 3)], {})],
    "exp": [([normal(2, 3)], {})],
    "log": [([positive(2, 3)], {})],
    "tanh": [([normal(2, 3)], {})],
    "sqrt": [([positive(2, 3)], {})],
    "gelu": [([normal(3, 4) * 2], {})],
    "relu": [([distinct(2, 3) - 0.25], {})],  # no 0: relu has no derivative there
    "sigmoid": [([normal(2, 3) * 4], {})],
    "add": [([normal(2, 3), normal(3)], {}), ([normal(2, 1, 3), normal(4, 1)], {})],
    "sub": [([normal(2, 3), normal(2, 1)], {})],
    "mul": [([normal(2, 3), normal(1, 3)], {}), ([normal(2, 3), normal()], {})],
    "div": [([normal(2, 3), positive(3)], {})],
    "pow": [([positive(2, 3), normal(3)], {}), ([positive(4), np.array(3.0)], {})],
    "maximum": [([distinct(2, 3), distinct(3) - 0.25], {})],
    "where": [([RNG.random((2, 3)) > 0.5, normal(2, 3), normal(3)], {})],
    "cast": [([normal(2, 3)], {"dtype": "float64"})],
    "sum": [([normal(2, 3, 4)], {"axes": (0, 2), "keepdims": False}), ([normal(2, 3)], {"axes": (1,), "keepdims": True})],
    "mean": [([normal(2, 3, 4)], {"axes": (1,), "keepdims": False}), ([normal(2, 3)], {"axes": (0, 1), "keepdims": True})],
    "max": [([distinct(2, 3, 4)], {"axes": (2,), "keepdims": False}), ([distinct(3, 4)], {"axes": (0, 1), "keepdims": True})],
    "matmul": [([normal(2, 3), normal(3, 4)], {}), ([normal(2, 2, 3), normal(3, 4)], {}),
               ([normal(2, 1, 3, 4), normal(3, 4, 2)], {})],
    "reshape": [([normal(2, 6)], {"shape": (3, 4)})],
    "matmul_permuted": [([normal(2, 3, 4, 5), normal(2, 3, 5, 2)], {"perm": (0, 2, 1, 3)}),
                        ([normal(3, 2, 4), normal(1, 4, 5)], {"perm": (1, 0, 2)})],
    "transpose": [([normal(2, 3, 4)], {"perm": (2, 0, 1)})],
    "broadcast_to": [([normal(3, 1)], {"shape": (2, 3, 4)})],
    "slice": [([normal(4, 5)], {"slices": ((1, 4, 2), (0, 5, 1))})],
    "unslice": [([normal(2, 5)], {"slices": ((1, 4, 2), (0, 5, 1)), "shape": (4, 5)})],
    "embedding": [([normal(5, 3), np.array([[0, 4, 4], [2, 0, 1]])], {})],
    "scatter_add": [([normal(2, 3, 4), np.array([[0, 4, 4], [2, 0, 1]])], {"num_rows": 6})],
    "softmax": [([normal(2, 5)], {"axis": 1}), ([normal(3, 2, 4)], {"axis": 0})],
    "log_softmax": [([normal(2, 5)], {"axis": 1})],
    "layer_norm": [([normal(2, 3, 5), normal(5), normal(5)], {"eps": 1e-5})],
    "cross_entropy": [([normal(2, 3, 5), np.array([[0, 4, 2], [1, 1, 3]])], {})],
    "concat": [([normal(2, 3), normal(2, 1), normal(2, 2)], {"axis": 1})],
    # q, k, v of one shape (the fused gradient kernel) with a bias mask, then keys of another length (composite)
    "attention": [([normal(2, 5, 3), normal(2, 5, 3), normal(2, 5, 3), normal(5, 5)], {"scale": 0.5}),
                  ([normal(1, 2, 4, 3), normal(1, 2, 6, 3), normal(1, 2, 6, 2), normal(4, 6)], {"scale": 0.7})],
    # tanh(x * b) + x, with x read twice and b broadcast
    "fused_elementwise": [([normal(2, 3), normal(3)], {"program": (("mul", (0, 1)), ("tanh", (2,)), ("add", (3, 0)))})],
}
# Results that carry no gradient: bool comparisons, one-hot of integers, constants, a random mask of a key; and
# the KV cache's write, which only decoding (without gradients) uses.
NO_GRADIENT = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal", "one_hot", "constant",
               "reciprocal_size", "dropout_mask", "cache_write"}
# Backward kernels have no rule (no second derivatives); the gelu, softmax, cross_entropy, layer_norm and attention
# rows check them.
BACKWARD_KERNELS = {"gelu_grad", "softmax_grad", "cross_entropy_grad", "layer_norm_grad", "layer_norm_gamma_grad",
                    "attention_grad"}


def test_every_op_is_covered():
    assert set(OPS) == set(CASES) | NO_GRADIENT | BACKWARD_KERNELS, "add a row to CASES (or NO_GRADIENT)"
    assert not set(CASES) & NO_GRADIENT


def test_differentiating_a_backward_kernel_says_so():
    x = graphgpt.Tensor(np.linspace(-1, 1, 6, dtype=np.float32), requires_grad=True)
    g = graphgpt.Tensor(np.ones(6, np.float32), requires_grad=True)
    with pytest.raises(GraphError, match="gelu_grad.*no gradient rule.*second derivatives"):
        g.gelu_grad(x).sum().backward()


@pytest.mark.parametrize("op", sorted(NO_GRADIENT))
def test_rules_of_ops_without_gradient_give_none(op):
    arity = get_op(op).arity
    rule = get_op(op).vjp
    assert rule is not None
    result = rule(None, None, *([None] * arity), **{name: None for name in get_op(op).attrs})
    assert tuple(result) == (None,) * arity


def projected(op, attrs, inputs, projection):
    """sum(op(*inputs) * projection) built from Tensors (eager) or traced values alike."""
    def objective(*tensors):
        return (tensors[0]._apply(op, tuple(tensors), attrs) * projection).sum()
    return objective


CASE_IDS = [(op, index) for op in sorted(CASES) for index in range(len(CASES[op]))]


@pytest.mark.parametrize("through", ["graph", "eager"])
@pytest.mark.parametrize("op,index", CASE_IDS, ids=[f"{op}-{i}" for op, i in CASE_IDS])
def test_gradient_rule_matches_central_differences(op, index, through):
    inputs, attrs = CASES[op][index]
    op_def = get_op(op)
    out_type = op_def.infer_type([TensorType.of(x) for x in inputs], op_def.check_attrs(attrs))
    projection = RNG.normal(size=out_type.shape)
    report = graphgpt.check_gradients(projected(op, attrs, inputs, projection), *inputs, through=through)
    float_inputs = sum(np.asarray(x).dtype.kind == "f" for x in inputs)
    assert len(report.parameters) == float_inputs
    assert report.passed, str(report)
