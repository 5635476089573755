"""The Tensor and autograd APIs torch users and TinyTorch students reach for: backward(gradient) (a
vector-Jacobian product, as torch's), backward() of any one-element tensor, its one-line refusals, the public
grad_fn view of the tape, and the dtype rules (explicit dtype=, mixed float32/float64 refused with the fix)."""

import numpy as np
import pytest

import graphgpt
from graphgpt import Tensor
from graphgpt.nn import functional as F

from conftest import make_gpt, make_tokens

RNG = np.random.default_rng(7)
A = RNG.normal(size=(3, 4))
B = RNG.normal(size=(4, 5))
ROW = RNG.normal(size=(4,))

# name -> (function of float64 Tensors, its inputs). The same function runs on torch tensors.
PROGRAMS = {
    "matmul": (lambda a, b: a @ b, (A, B)),
    "broadcasting add": (lambda a, row: a + row, (A, ROW)),
    "reshape": (lambda a, b: (a.reshape(2, 6) * 3.0).reshape(6, 2) @ b[:2, :], (A, B)),
    "softmax": (lambda a, b: (a @ b).softmax(-1), (A, B)),
}


def leaves(arrays):
    return [Tensor(array, requires_grad=True, dtype="float64") for array in arrays]


def upstream(shape):
    return np.cos(np.arange(int(np.prod(shape)))).reshape(shape)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_backward_with_a_gradient_is_the_vector_jacobian_product(name):
    """backward(g) fills .grad as backward() of sum(y * g) does (no torch needed), and a second call adds."""
    function, arrays = PROGRAMS[name]
    inputs = leaves(arrays)
    result = function(*inputs)
    g = upstream(result.shape)
    result.backward(g)
    once = [x.grad.copy() for x in inputs]

    weighted = leaves(arrays)
    (function(*weighted) * g).sum().backward()
    for ours, reference in zip(once, [x.grad for x in weighted]):
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)

    result.backward(Tensor(g, dtype="float64"))  # a Tensor works too; the tape is kept, and .grad accumulates
    for x, first in zip(inputs, once):
        np.testing.assert_allclose(x.grad, 2 * first, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_backward_with_a_gradient_matches_torch(name):
    torch = pytest.importorskip("torch")
    function, arrays = PROGRAMS[name]
    inputs = leaves(arrays)
    result = function(*inputs)
    g = upstream(result.shape)
    result.backward(g)
    result.backward(g)

    torch_inputs = [torch.tensor(array, requires_grad=True) for array in arrays]
    torch_result = function(*torch_inputs) if name != "softmax" else (torch_inputs[0] @ torch_inputs[1]).softmax(-1)
    torch_result.backward(torch.tensor(g), retain_graph=True)
    torch_result.backward(torch.tensor(g))
    for ours, theirs in zip(inputs, torch_inputs):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_the_gradient_is_cast_to_the_tensors_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    (x * 2.0).backward(np.array([1.0, 2.0, 3.0], np.float64))
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (1, 1, 1)])
def test_backward_without_a_gradient_takes_any_one_element_tensor(shape):
    x = Tensor(ROW, requires_grad=True, dtype="float64")
    loss = (x * x).sum().reshape(*shape)
    assert loss.shape == shape
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * ROW, rtol=1e-15)


def test_a_non_scalar_without_a_gradient_is_refused_in_one_line():
    x = Tensor(A, requires_grad=True, dtype="float64")
    with pytest.raises(graphgpt.ShapeError) as refused:
        (x * 2.0).backward()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("backward() of a non-scalar f64[3,4] needs gradient= of shape (3, 4)")
    assert x.grad is None


@pytest.mark.parametrize("gradient", [np.ones(4), np.ones((4, 3)), Tensor(np.ones((1, 4)))])
def test_a_gradient_of_another_shape_is_refused_naming_both_shapes(gradient):
    x = Tensor(A, requires_grad=True, dtype="float64")
    with pytest.raises(graphgpt.ShapeError) as refused:
        (x * 2.0).backward(gradient)
    message = str(refused.value)
    assert "\n" not in message
    assert f"gradient has shape {np.shape(gradient.data if isinstance(gradient, Tensor) else gradient)}" in message
    assert "f64[3,4] has shape (3, 4)" in message
    assert x.grad is None


def test_backward_inside_compile_is_refused_saying_what_to_do():
    def step(x):
        loss = (x * x).sum()
        loss.backward()
        return loss

    with pytest.raises(graphgpt.TraceError) as refused:
        graphgpt.compile(step, np.ones(3, np.float32))
    message = str(refused.value)
    assert "\n" not in message
    assert "cannot call .backward() on a traced tensor" in message and "test_tensor_api.py" in message
    assert "graphgpt.compile(model, x, targets, loss=..., optimizer=...)" in message


# ---- grad_fn -----------------------------------------------------------------------------------------------------

def test_grad_fn_is_none_for_leaves_and_untracked_results():
    x = Tensor(ROW, requires_grad=True)
    constant = Tensor(ROW)
    assert x.grad_fn is None and constant.grad_fn is None
    assert (constant * 2.0).grad_fn is None  # nothing requiring grad flowed in
    with graphgpt.no_grad():
        assert (x * 2.0).grad_fn is None
    assert (x > 0).grad_fn is None  # a bool result carries no gradient


def test_grad_fn_names_the_op_and_links_to_its_inputs():
    x = Tensor(A, requires_grad=True)
    w = Tensor(B, requires_grad=True)
    product = x @ w
    scaled = product * Tensor(upstream(product.shape))
    loss = scaled.log_softmax(-1).sum()

    assert product.grad_fn is not None
    assert repr(product.grad_fn) == "<MatmulBackward>" and product.grad_fn.name() == "MatmulBackward"
    assert repr(scaled.log_softmax(-1).grad_fn) == "<LogSoftmaxBackward>"
    assert loss.grad_fn.op == "sum"
    assert loss.grad_fn.next_functions[0][0].next_functions[0][0] == scaled.grad_fn
    (to_product, index), (to_constant, _) = scaled.grad_fn.next_functions
    assert to_product == product.grad_fn and index == 0 and to_constant is None
    accumulate = [entry for entry, _ in product.grad_fn.next_functions]
    assert [repr(entry) for entry in accumulate] == ["<AccumulateGrad>", "<AccumulateGrad>"]
    assert accumulate[0].variable is x and accumulate[1].variable is w


def test_each_op_has_its_own_grad_fn_class_also_under_the_course_name():
    embedded = graphgpt.nn.Embedding(5, 3)(Tensor(np.array([1, 2])))
    assert type(embedded._grad_fn).__name__ == "EmbeddingBackward" and embedded._grad_fn == embedded.grad_fn
    x = Tensor(A, requires_grad=True)
    assert type((x * 2.0).grad_fn) is type((x * 3.0).grad_fn) is not type(x.exp().grad_fn)
    assert Tensor(A)._grad_fn is None


def test_dtype_is_a_numpy_dtype_equal_to_the_type_and_the_name():
    x = Tensor(np.ones(3))
    assert x.dtype == np.float32 and x.dtype == "float32" and isinstance(x.dtype, np.dtype)
    assert Tensor(np.arange(3)).dtype == np.int64


def test_grad_fn_names_follow_torchs_for_the_same_op():
    torch = pytest.importorskip("torch")
    ours = Tensor(A, requires_grad=True)
    theirs = torch.tensor(A, requires_grad=True)
    for function in (lambda x: x.exp(), lambda x: x.sum(), lambda x: x.tanh(), lambda x: x * x,
                     lambda x: x.log_softmax(-1)):
        # torch appends a version number: MulBackward0
        assert type(function(theirs).grad_fn).__name__ == function(ours).grad_fn.name() + "0"


# ---- dtypes --------------------------------------------------------------------------------------------------------

def test_float_data_without_a_dtype_is_float32_as_in_tinytorch():
    assert Tensor(np.random.default_rng(0).normal(size=(3, 4))).dtype == "float32"
    assert Tensor(1.5).dtype == "float32" and Tensor([[1.0, 2.0]]).dtype == "float32"
    assert graphgpt.Parameter(A).dtype == "float32"
    np.testing.assert_array_equal(Tensor(A).data, A.astype(np.float32))
    weights = Tensor(np.ones((4, 2), np.float32), requires_grad=True)
    (Tensor(A) @ weights).sum().backward()  # the course's habit, float64 NumPy data against float32 weights
    assert weights.grad.dtype == np.float32


def test_an_explicit_dtype_is_kept():
    assert Tensor(A, dtype="float64").dtype == "float64"
    assert Tensor(A, dtype=np.float64).dtype == "float64"
    assert Tensor(A, dtype="f64").dtype == "float64"  # the IR's short names work too
    assert Tensor(A, dtype="float32").dtype == "float32"
    assert Tensor(Tensor(A, dtype="float64")).dtype == "float64"  # a Tensor keeps its dtype
    assert Tensor([1, 2]).dtype == "int64"
    rows = list(Tensor(A, dtype="float64"))
    assert len(rows) == 3 and all(row.dtype == "float64" for row in rows)


def test_mixing_float32_and_float64_is_refused_saying_how_to_fix_it():
    parameters = Tensor(np.ones((4, 2), np.float32))
    with pytest.raises(graphgpt.ShapeError) as refused:
        Tensor(A, dtype="float64") @ parameters
    first_line = str(refused.value).splitlines()[0]
    assert "inputs must share one dtype, got f64[3,4], f32[4,2]" in first_line
    assert "x.astype('float32'), or Tensor(data, dtype='float32')" in first_line
    with pytest.raises(graphgpt.ShapeError, match=r"got f32\[4,2\], f64\[2\] .*x.astype\('float32'\)"):
        graphgpt.compile(lambda w, v: w + v, np.ones((4, 2), np.float32), np.ones(2))


def test_a_float64_model_trains_and_gradchecks_in_float64():
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2).to(np.float64)
    tokens, targets = make_tokens(11, 2, 5, seed=1), make_tokens(11, 2, 5, seed=2)
    assert graphgpt.check_gradients(model, tokens, targets, loss=F.cross_entropy, max_elements=8).passed

    loss = F.cross_entropy(model(Tensor(tokens)), Tensor(targets))
    assert loss.dtype == "float64"
    loss.backward()
    parameters = list(model.parameters())
    before = [(p.data.copy(), p.grad.copy()) for p in parameters]
    graphgpt.optim.SGD(parameters, lr=0.5).step()
    for parameter, (value, gradient) in zip(parameters, before):
        assert parameter.dtype == "float64" and gradient.dtype == np.float64
        np.testing.assert_array_equal(parameter.data, value - gradient * 0.5)  # computed in float64 throughout
