"""Optimizers: their math against an independent NumPy transcription of torch.optim's documented algorithms,
compiled (graph nodes) against eager after 20 GPT steps, state save and restore, and refusals."""

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from graphgpt.optim import SGD, Adam, AdamW
from conftest import make_gpt, make_tokens


def reference_run(kind, params, grads_per_step, lr, clip=None, momentum=0.0, nesterov=False, weight_decay=0.0,
                  betas=(0.9, 0.999), eps=1e-8):
    """torch.optim's SGD / Adam / AdamW pseudo-code, in float64 NumPy, plus clip_grad_norm_ before each step."""
    params = [p.copy() for p in params]
    state = [dict(m=np.zeros_like(p), v=np.zeros_like(p), buf=None) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        grads = [g.copy() for g in grads]
        if clip is not None:
            total = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * min(1.0, clip / (total + 1e-6)) for g in grads]
        for p, g, s in zip(params, grads, state):
            if kind == "sgd":
                g = g + weight_decay * p
                if momentum:
                    s["buf"] = g.copy() if s["buf"] is None else momentum * s["buf"] + g
                    g = g + momentum * s["buf"] if nesterov else s["buf"]
                p -= lr * g
                continue
            if kind == "adamw":
                p *= 1 - lr * weight_decay
            elif weight_decay:
                g = g + weight_decay * p
            s["m"] = betas[0] * s["m"] + (1 - betas[0]) * g
            s["v"] = betas[1] * s["v"] + (1 - betas[1]) * g * g
            m_hat = s["m"] / (1 - betas[0] ** t)
            v_hat = s["v"] / (1 - betas[1] ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


OPTIMIZERS = {
    "sgd": (lambda ps: SGD(ps, lr=0.1), {}),
    "sgd_momentum_decay": (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
                           dict(momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True), dict(momentum=0.8, nesterov=True)),
    "adam": (lambda ps: Adam(ps, lr=0.01), {}),
    "adam_l2_clip": (lambda ps: Adam(ps, lr=0.01, weight_decay=0.1, clip_grad_norm=0.5),
                     dict(weight_decay=0.1, clip=0.5)),
    "adamw": (lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1), dict(weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_eager_step_matches_reference_algorithm(name):
    make_optimizer, options = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    params = [graphgpt.Parameter(rng.normal(size=shape), dtype="float64") for shape in [(3, 2), (4,)]]
    initial = [p.data.copy() for p in params]
    grads_per_step = [[rng.normal(size=p.shape) for p in params] for _ in range(6)]
    optimizer = make_optimizer(params)
    for grads in grads_per_step:
        for parameter, grad in zip(params, grads):
            parameter.grad = grad
        optimizer.step()
    kind = name.split("_")[0]
    lr = 0.05 if name == "sgd_nesterov" else (0.1 if kind == "sgd" else 0.01)
    expected = reference_run(kind, initial, grads_per_step, lr, **options)
    for parameter, reference in zip(params, expected):
        np.testing.assert_allclose(parameter.data, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sgd_momentum_decay", "adam_l2_clip", "adamw"])
@pytest.mark.parametrize("optimised", [False, True])
def test_compiled_steps_equal_eager_steps_after_20(name, optimised):
    """Unoptimised, the compiled step is the tape's arithmetic in the tape's order: equal to the bit after 20
    steps. Optimised, rewrites may round differently, so the check is float32-close."""
    make_optimizer, _ = OPTIMIZERS[name]
    compiled_model, eager_model = make_gpt(seed=4), make_gpt(seed=4)
    batches = [(make_tokens(17, 2, 6, seed=s), make_tokens(17, 2, 6, seed=100 + s)) for s in range(20)]
    step = graphgpt.compile(compiled_model, *batches[0], loss=F.cross_entropy, optimizer=make_optimizer(None),
                            passes=None if optimised else [])
    eager_optimizer = make_optimizer(eager_model.named_parameters())
    for tokens, targets in batches:
        compiled_loss = step.run(tokens, targets)
        eager_loss = F.cross_entropy(eager_model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets))
        eager_loss.backward()
        eager_optimizer.step()
        eager_optimizer.zero_grad()
        if optimised:
            np.testing.assert_allclose(compiled_loss, eager_loss.data, rtol=1e-4)
        else:
            assert float(compiled_loss) == float(eager_loss.data)
    for name_, value in compiled_model.state_dict().items():
        if optimised:
            np.testing.assert_allclose(value, eager_model.state_dict()[name_], rtol=1e-5, atol=1e-5, err_msg=name_)
        else:
            np.testing.assert_array_equal(value, eager_model.state_dict()[name_], err_msg=name_)
    assert not np.array_equal(compiled_model.state_dict()["lm_head.weight"], make_gpt(seed=4).lm_head.weight.data)


def test_optimizer_state_saves_and_restores_mid_training():
    batches = [(make_tokens(17, 2, 6, seed=s), make_tokens(17, 2, 6, seed=50 + s)) for s in range(8)]
    model = make_gpt(seed=2)
    optimizer = Adam(lr=0.01)
    step = graphgpt.compile(model, *batches[0], loss=F.cross_entropy, optimizer=optimizer)
    for batch in batches[:4]:
        step.run(*batch)
    saved_model, saved_optimizer = model.state_dict(), optimizer.state_dict()
    assert float(saved_optimizer["state"]["step"]) == 4.0
    uninterrupted = [float(step.run(*batch)) for batch in batches[4:]]

    restored_model, restored_optimizer = make_gpt(seed=99), Adam(lr=0.01)
    restored_model.load_state_dict(saved_model)
    restored_step = graphgpt.compile(restored_model, *batches[0], loss=F.cross_entropy,
                                     optimizer=restored_optimizer)
    restored_optimizer.load_state_dict(saved_optimizer)
    resumed = [float(restored_step.run(*batch)) for batch in batches[4:]]
    assert resumed == uninterrupted


def test_optimizer_refusals():
    params = [graphgpt.Parameter(np.zeros(2), dtype="float64")]
    with pytest.raises(ValueError, match="learning rate must be positive"):
        Adam(params, lr=0)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(1.0, 0.9))
    with pytest.raises(RuntimeError, match="call loss.backward\\(\\) first"):
        SGD(params, lr=0.1).step()
    adam = Adam(params)
    with pytest.raises(ValueError, match="cannot load 'SGD' optimizer state into Adam"):
        adam.load_state_dict(SGD(params, lr=0.1).state_dict())
    bad = adam.state_dict()
    bad["state"]["exp_avg.0"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"mismatched \['exp_avg.0: expected \[2\], got \[5\]'\]"):
        adam.load_state_dict(bad)
    with pytest.raises(TypeError, match="an optimizer needs a loss"):
        graphgpt.compile(make_gpt(), make_tokens(17, 1, 3), optimizer=Adam(lr=0.1))


def test_train_graph_prints_its_updates():
    model = make_gpt(layers=1)
    tokens = make_tokens(17, 1, 4)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=SGD(lr=0.1, momentum=0.9))
    text = str(step.graph)
    assert "update %lm_head.weight <- %" in text
    # The momentum buffers of the run of all parameters are one joined vector, updated as one.
    assert "update %optimizer.momentum_buffer.<token_embedding.weight to lm_head.weight> <- %" in text
    assert "%optimizer.step:f32[]" in text
    assert len(step.graph.updates) == len(model.parameters()) + 1 + 1


class HeadOnly(graphgpt.nn.Module):
    def __init__(self):
        graphgpt.manual_seed(1)
        self.head = graphgpt.nn.Linear(3, 4)

    def forward(self, x):
        return self.head(x)


class WithUnusedParameter(HeadOnly):
    """The same head and a parameter the loss never reads: torch.optim leaves it alone (no step, no decay)."""

    def __init__(self):
        super().__init__()
        self.unused = graphgpt.nn.Parameter(np.ones(5, np.float32))


def train_three_steps(model, kind, how):
    optimizer = {"sgd": SGD, "adam": Adam, "adamw": AdamW}[kind](lr=0.1, weight_decay=0.5)
    x = np.random.default_rng(0).normal(size=(4, 3))
    targets = np.array([0, 1, 2, 3])
    if how == "eager":
        optimizer.bind(model.named_parameters())
    else:
        step = graphgpt.compile(model, x, targets, loss=F.cross_entropy, optimizer=optimizer,
                                shards=2 if how == "compiled split" else 1)
    for _ in range(3):
        if how == "eager":
            model.zero_grad()
            F.cross_entropy(model(graphgpt.Tensor(x, dtype="float64")), graphgpt.Tensor(targets)).backward()
            optimizer.step()
        else:
            step.run(x, targets)
    return optimizer


@pytest.mark.parametrize("how", ["eager", "compiled", "compiled split"])
@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_a_parameter_the_loss_never_reads_is_left_alone_as_torch_does(kind, how):
    model, alone = WithUnusedParameter().to("float64"), HeadOnly().to("float64")
    optimizer = train_three_steps(model, kind, how)
    train_three_steps(alone, kind, how)
    np.testing.assert_array_equal(model.unused.data, np.ones(5))  # no step, no weight decay
    for slot in optimizer.slots:
        assert not optimizer.state[f"{slot}.unused"].data.any()
    for name in ("head.weight", "head.bias"):  # the others train as if it were not there
        np.testing.assert_array_equal(dict(model.named_parameters())[name].data,
                                      dict(alone.named_parameters())[name].data, err_msg=name)


@pytest.mark.parametrize("kind, options, says", [
    (SGD, dict(lr=float("nan")), "learning rate must be positive, got nan"),
    (SGD, dict(lr=float("inf")), "learning rate must be positive, got inf"),
    (SGD, dict(lr="0.1"), "learning rate must be positive, got '0.1'"),
    (SGD, dict(lr=True), "learning rate must be positive, got True"),
    (SGD, dict(lr=0.1, momentum=-0.5), "momentum must be non-negative"),
    (SGD, dict(lr=0.1, weight_decay=float("nan")), "weight_decay must be non-negative, got nan"),
    (Adam, dict(weight_decay=-1.0), "weight_decay must be non-negative"),
    (Adam, dict(eps=float("nan")), "eps must be non-negative"),
    (Adam, dict(betas=(float("nan"), 0.9)), r"betas must lie in \[0, 1\)"),
    (Adam, dict(betas=(0.9,)), r"betas must lie in \[0, 1\)"),
    (AdamW, dict(clip_grad_norm=float("nan")), "clip_grad_norm must be positive, got nan"),
])
def test_hyperparameters_that_would_train_to_nan_are_refused(kind, options, says):
    with pytest.raises(ValueError, match=says):
        kind(**options)


def one_update(optimizer, params, grads, joined):
    """New parameters and state from one update of `optimizer` over Tensors, joined into one vector (update) or
    parameter by parameter (_update_each)."""
    names = [name for name, _ in optimizer.named_params]
    handles = [graphgpt.Tensor(p, dtype="float64") for p in params]
    gradients = [graphgpt.Tensor(g, dtype="float64") for g in grads]
    update = optimizer.update if joined else optimizer._update_each
    new_params, new_state = update(names, handles, gradients, optimizer.state)
    return [p.data for p in new_params], {name: value.data for name, value in new_state.items()}


@pytest.mark.parametrize("joined_elements", [None, 7])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_elementwise_updates_run_over_parameters_joined_with_the_same_arithmetic(name, joined_elements,
                                                                                  monkeypatch):
    """Joined into vectors (one, or with runs of at most 7 elements: [(3, 2)], [(4,), ()], [(2, 1, 3)]), each
    element goes through the same operations: the same bits, but for the clipping norm, whose sum is taken over
    each vector instead of parameter by parameter (float64: within 1e-15)."""
    if joined_elements:
        monkeypatch.setattr(graphgpt.optim, "JOINED_ELEMENTS", joined_elements)
    make_optimizer, options = OPTIMIZERS[name]
    rng = np.random.default_rng(3)
    params = [rng.normal(size=shape) for shape in [(3, 2), (4,), (), (2, 1, 3)]]
    grads = [rng.normal(size=p.shape) for p in params]
    optimizer = make_optimizer([graphgpt.Parameter(p.copy(), dtype="float64") for p in params])
    assert optimizer._joined_runs(params) == ([[0], [1, 2], [3]] if joined_elements else [[0, 1, 2, 3]])
    joined = one_update(optimizer, params, grads, joined=True)
    each = one_update(optimizer, params, grads, joined=False)
    assert joined[1].keys() == each[1].keys()
    for got, want in zip([*joined[0], *joined[1].values()], [*each[0], *(each[1][key] for key in joined[1])]):
        assert got.shape == want.shape
        if "clip" in options:
            np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
        else:
            np.testing.assert_array_equal(got, want)


def test_a_compiled_elementwise_update_is_a_few_passes_over_one_vector():
    """The update's operations run once over the joined vector: as many with two layers as with one, where one
    by one they grew with every parameter; slices and reshapes (views) cut the results apart."""
    def optimizer_ops(layers):
        model = make_gpt(layers=layers)
        tokens = make_tokens(17, 1, 4)
        step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy,
                                optimizer=AdamW(lr=0.1, clip_grad_norm=1.0))
        joined = [node for node in step.graph.nodes if node.op == "concat"]
        assert len(joined) == 2  # parameters and gradients: the two moving averages are stored joined
        size = sum(p.data.size for p in model.parameters())
        assert all(node.output.type.shape == (size,) for node in joined)
        assert {value.name: value.type.shape for value in step.graph.params if "exp_avg" in value.name} == {
            "optimizer.exp_avg.<token_embedding.weight to lm_head.weight>": (size,),
            "optimizer.exp_avg_sq.<token_embedding.weight to lm_head.weight>": (size,)}
        storage = step.program.graphs[0].plan.storage  # the new averages computed straight into the vectors
        assert all(storage[value.id].kind == "into_param" for parameter, value in step.graph.updates
                   if "exp_avg" in parameter.name)
        return sorted(node.op for node in step.graph.nodes
                      if node.provenance.role == "optimizer" and node.op not in ("slice", "reshape"))

    assert optimizer_ops(1) == optimizer_ops(2)


class PerParameterNorm(Adam):
    """A rule that is not elementwise (each parameter's step scaled by its own norm, as LAMB does) and says
    nothing: it must be updated parameter by parameter."""

    def update_parameter(self, parameter, gradient, state, step, lr):
        new_parameter, slots = super().update_parameter(parameter, gradient, state, step, lr)
        return new_parameter / ((new_parameter * new_parameter).sum().sqrt() + 1.0), slots


def test_a_subclass_overriding_the_update_is_updated_parameter_by_parameter():
    assert Adam.updates_elementwise() and AdamW.updates_elementwise() and SGD.updates_elementwise()
    assert not PerParameterNorm.updates_elementwise()

    class Inheriting(PerParameterNorm):  # a declaration only counts in the class defining update_parameter
        elementwise_update = True

    class Declaring(PerParameterNorm):  # a false declaration, to show what it would change
        elementwise_update = True

        def update_parameter(self, *arguments):
            return super().update_parameter(*arguments)

    assert not Inheriting.updates_elementwise() and Declaring.updates_elementwise()
    rng = np.random.default_rng(5)
    params = [rng.normal(size=shape) for shape in [(3, 2), (4,)]]
    grads = [rng.normal(size=p.shape) for p in params]

    def updated(kind, joined):
        optimizer = kind([graphgpt.Parameter(p.copy(), dtype="float64") for p in params], lr=0.1)
        return one_update(optimizer, params, grads, joined)[0]

    each = updated(PerParameterNorm, joined=False)
    for got, want in zip(updated(PerParameterNorm, joined=True), each):
        np.testing.assert_array_equal(got, want)
    # joined, the norm would be the whole vector's: different parameters
    assert not all(np.allclose(got, want) for got, want in zip(updated(Declaring, joined=True), each))


def test_runs_join_parameters_of_one_dtype_and_known_size_only():
    """Runs split where the dtype changes (an optimizer's scalars have one dtype, so a whole update never mixes
    them; the runs do not rely on it) and never hold a parameter of symbolic size."""
    class Handle:
        def __init__(self, size, dtype):
            self.size, self.dtype = size, dtype

    optimizer = AdamW([graphgpt.Parameter(np.zeros(2, np.float32))], lr=0.01)
    from graphgpt.ir.dims import Dim
    handles = [Handle(6, "float32"), Handle(4, "float32"), Handle(5, "float64"), Handle(2, "float32"),
               Handle(Dim.symbol("T") * 4, "float32"), Handle(0, "float32"), Handle(3, "float32")]
    assert optimizer._joined_runs(handles) == [[0, 1], [2], [3], [4], [5, 6]]
