"""Values Python reads while tracing are frozen into the graph, so Python may not read the values a compiled graph
reads live: a parameter's or buffer's data inside forward raises TraceError at the user's line (issue: a forward
that branched on `self.w.data` kept its trace-time branch after load_state_dict, silently). Buffers (Tensor
attributes that are not Parameters) are graph parameters read at every run, so changing them later is seen."""

import threading

import numpy as np
import pytest

import graphgpt
from graphgpt import TraceError, nn


class BranchOnWeight(nn.Module):
    def __init__(self, read):
        self.w = nn.Parameter(np.ones(3, np.float32))
        self.read = read

    def forward(self, x):
        return self.read(self, x)


READS = {
    ".data in an if": lambda m, x: x * m.w if m.w.data.sum() > 0 else -x * m.w,
    "np.tanh of .data": lambda m, x: x * graphgpt.Tensor(np.tanh(m.w.data)),
    "np.tanh of the parameter": lambda m, x: x * graphgpt.Tensor(np.tanh(m.w)),
    ".numpy()": lambda m, x: x + graphgpt.Tensor(m.w.numpy().copy()),
    "a Tensor made from it": lambda m, x: x * graphgpt.Tensor(m.w),
    "iterating over it": lambda m, x: x * sum(row for row in m.w),
    ".item()": lambda m, x: x * m.w[0:1].sum() + float(m.w.data[0]),
}


@pytest.mark.parametrize("read", list(READS.values()), ids=list(READS))
def test_reading_a_parameters_value_while_tracing_is_refused_at_the_users_line(read):
    model = BranchOnWeight(read)
    x = np.arange(3, dtype=np.float32)
    model(graphgpt.Tensor(x))  # eagerly it is ordinary Python
    with pytest.raises(TraceError, match=r"parameter 'w' \(f32\[3\]\) at .*test_frozen_values.py:\d+ while "
                                         r"graphgpt.compile traces"):
        graphgpt.compile(model, x)


def test_the_issues_example_now_fails_at_compile_instead_of_running_stale():
    model = BranchOnWeight(READS[".data in an if"])
    x = np.arange(3, dtype=np.float32)
    with pytest.raises(TraceError, match="would be frozen into the graph"):
        graphgpt.compile(model, x)


def test_tensor_ops_on_the_parameter_compile_and_follow_its_changes():
    model = BranchOnWeight(lambda m, x: (m.w.sum() > 0).where(x * m.w, -x * m.w) + m.w.tanh())
    x = np.arange(3, dtype=np.float32)
    compiled = graphgpt.compile(model, x)
    model.load_state_dict({"w": -np.ones(3, np.float32)})
    np.testing.assert_array_equal(compiled.run(x), model(graphgpt.Tensor(x)).data)


class Shifted(nn.Module):
    """A buffer: a Tensor attribute that is not trained."""

    def __init__(self):
        self.weight = nn.Parameter(np.ones((3, 2), np.float32))
        self.offset = graphgpt.Tensor(np.zeros(2, np.float32))

    def forward(self, x):
        return x @ self.weight + self.offset


def test_a_buffer_is_read_live_so_changing_it_after_compile_is_seen():
    model = Shifted()
    assert [name for name, _ in model.named_buffers()] == ["offset"]
    assert [name for name, _ in model.named_parameters()] == ["weight"]
    x = np.ones((4, 3), np.float32)
    compiled = graphgpt.compile(model, x)
    assert [value.name for value in compiled.graph.params] == ["weight", "offset"]
    model.offset.data[...] = 5.0  # in place
    np.testing.assert_array_equal(compiled.run(x), model(graphgpt.Tensor(x)).data)
    model.offset.data = np.full(2, -1.0, np.float32)  # replaced
    np.testing.assert_array_equal(compiled.run(x), model(graphgpt.Tensor(x)).data)


def test_a_buffer_is_not_trained():
    model = Shifted()
    x, targets = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    step = graphgpt.compile(model, x, targets, loss=nn.functional.cross_entropy,
                            optimizer=graphgpt.optim.SGD(lr=0.5))
    step.run(x, targets)
    assert set(step.grads) == {"weight"}
    assert not model.offset.data.any()


def test_reading_a_buffer_while_tracing_is_refused():
    class ReadsBuffer(Shifted):
        def forward(self, x):
            return x @ self.weight + float(self.offset.data.sum())

    with pytest.raises(TraceError, match="parameter 'offset'"):
        graphgpt.compile(ReadsBuffer(), np.ones((4, 3), np.float32))


def test_another_thread_may_read_the_parameter_while_this_one_traces():
    model = BranchOnWeight(lambda m, x: x * m.w)
    tracing_started, read_done = threading.Event(), threading.Event()
    seen = []

    def slow_forward(m, x):
        tracing_started.set()
        read_done.wait(10)
        return x * m.w

    model.read = slow_forward

    def read_in_another_thread():
        tracing_started.wait(10)
        seen.append(model.w.data.sum())  # not tracing in this thread: an ordinary read
        read_done.set()

    reader = threading.Thread(target=read_in_another_thread)
    reader.start()
    graphgpt.compile(model, np.ones(3, np.float32))
    reader.join()
    assert seen == [3.0]


# ---- changes after compile: followed where the graph reads live values, refused where it baked them in ----------

def tiny_step(optimizer=None):
    graphgpt.manual_seed(2)
    model = graphgpt.nn.GPT(11, 8, 1, 2, max_seq_len=4)
    tokens = np.random.default_rng(0).integers(0, 11, (2, 4))
    step = graphgpt.compile(model, tokens, tokens, loss=nn.functional.cross_entropy, optimizer=optimizer)
    return model, tokens, step


def eager_loss(model, tokens):
    return nn.functional.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(tokens)).data


def test_a_parameter_replaced_by_another_of_its_type_is_read():
    model, tokens, step = tiny_step()
    model.lm_head.weight = nn.Parameter(np.full((8, 11), 0.25, np.float32))
    np.testing.assert_allclose(step.run(tokens, tokens), eager_loss(model, tokens), rtol=1e-6)
    model.blocks[0].ln1.gamma = nn.Parameter(np.full(8, 3.0, np.float32))  # inside a list of blocks
    np.testing.assert_allclose(step.run(tokens, tokens), eager_loss(model, tokens), rtol=1e-6)


@pytest.mark.parametrize("change, says", [
    (lambda model, optimizer: setattr(model, "lm_head", graphgpt.nn.Linear(8, 11, bias=False)),
     "'lm_head' of the model was replaced since compile"),
    (lambda model, optimizer: model.blocks.__setitem__(0, graphgpt.nn.TransformerBlock(8, 2)),
     "'blocks.0' of the model was replaced"),
    (lambda model, optimizer: setattr(optimizer, "lr", 0.5), r"hyperparameters changed since compile \({'lr'"),
    (lambda model, optimizer: setattr(model.ln_f.gamma, "requires_grad", False),
     "'ln_f.gamma' has requires_grad=False now"),
    (lambda model, optimizer: delattr(model.ln_f, "beta"), "'ln_f.beta' is gone from the model"),
])
def test_changes_the_compiled_graph_cannot_follow_are_refused(change, says):
    optimizer = graphgpt.optim.AdamW(lr=1e-3)
    model, tokens, step = tiny_step(optimizer)
    step.run(tokens, tokens)
    change(model, optimizer)
    with pytest.raises(graphgpt.ModelChangedError, match=says):
        step.run(tokens, tokens)


def test_optimizer_state_loaded_in_place_or_replaced_is_read():
    optimizer = graphgpt.optim.SGD(lr=0.1, momentum=0.9)
    model, tokens, step = tiny_step(optimizer)
    step.run(tokens, tokens)
    name = "momentum_buffer.lm_head.weight"
    optimizer.state[name] = graphgpt.Tensor(np.zeros((8, 11), np.float32))
    before = model.lm_head.weight.data.copy()
    step.run(tokens, tokens)
    assert optimizer.state[name].data.any()  # the new state tensor was updated in place
    np.testing.assert_allclose(before - model.lm_head.weight.data, 0.1 * optimizer.state[name].data, atol=1e-7)
