"""Lazy compile with symbolic sizes: `dynamic=True` (or "batch", "seq") makes one trace serve every batch and
sequence length, and the automatic default (`dynamic=None`) compiles static first, then dynamic in the axes that
changed. These need the symbolic dimensions of compile(model, *examples, dynamic=...) (ir/dims.py)."""

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F

VOCAB = 65
SIZES = [(batch, seq_len) for seq_len in (8, 16, 31, 64) for batch in (1, 3)]


def make_model(seed=0):
    graphgpt.manual_seed(seed)
    return graphgpt.nn.GPT(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=64)


def tokens(batch, seq_len, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, seq_len))


@pytest.fixture(autouse=True)
def explained(recompile_explanations):
    recompile_explanations(True)


def test_dynamic_true_serves_every_batch_and_length_with_one_trace(traces, capsys):
    model = make_model()
    fast = graphgpt.compile(model, dynamic=True)
    for batch, seq_len in SIZES:
        data = tokens(batch, seq_len)
        np.testing.assert_array_equal(fast(data), model(graphgpt.Tensor(data)).data)
    assert traces["forward"] == 1 and capsys.readouterr().err == ""
    (entry,) = fast.cache
    assert entry.signature == "tokens: i64[B,T]" and entry.symbolic == ("batch", "seq") and entry.runs == len(SIZES)
    assert "i64[B,T]" in fast.ir


def test_automatic_goes_dynamic_in_the_axes_that_changed(traces, capsys):
    model = make_model()
    fast = graphgpt.compile(model)
    for batch, seq_len in [(1, 8), (1, 16), (1, 31), (1, 64), (3, 8), (3, 64), (1, 8)]:
        data = tokens(batch, seq_len)
        np.testing.assert_array_equal(fast(data), model(graphgpt.Tensor(data)).data)
    assert traces["forward"] == 3
    assert capsys.readouterr().err.splitlines() == [
        "graphgpt: recompiling forward: input 0 'tokens' changed i64[1,8] -> i64[1,16] (compiling dynamic in seq)",
        "graphgpt: recompiling forward: input 0 'tokens' changed i64[1,T] -> i64[3,8] (compiling dynamic in batch, "
        "seq)"]
    assert [(entry.signature, entry.symbolic) for entry in fast.cache] == [
        ("tokens: i64[1,8]", ()), ("tokens: i64[1,T]", ("seq",)), ("tokens: i64[B,T]", ("batch", "seq"))]


def test_dynamic_batch_recompiles_for_a_new_length_only(traces):
    model = make_model()
    fast = graphgpt.compile(model, dynamic="batch")
    for batch, seq_len in [(1, 8), (3, 8), (2, 8), (2, 16), (5, 16)]:
        data = tokens(batch, seq_len)
        np.testing.assert_array_equal(fast(data), model(graphgpt.Tensor(data)).data)
    assert traces["forward"] == 2
    assert [(entry.signature, entry.symbolic) for entry in fast.cache] == [
        ("tokens: i64[B,8]", ("batch",)), ("tokens: i64[B,16]", ("batch",))]


def test_a_dynamic_training_step_matches_static_steps(traces):
    model, twin = make_model(), make_model()
    lazy = graphgpt.compile(model, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3), dynamic=True)
    twin_optimizer = graphgpt.optim.Adam(lr=1e-3)
    for step, seq_len in enumerate((8, 16, 31)):
        data, targets = tokens(2, seq_len, seed=step), tokens(2, seq_len, seed=10 + step)
        static = graphgpt.compile(twin, data, targets, loss=F.cross_entropy, optimizer=twin_optimizer, dynamic=False)
        assert lazy(data, targets) == static(data, targets)
    assert traces["training step"] == 1 + 3
    for (name, parameter), (_, twin_parameter) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(parameter.data, twin_parameter.data, err_msg=name)
    assert [entry.symbolic for entry in lazy.cache] == [("batch", "seq")]


def test_a_length_past_the_guard_recompiles_and_the_model_refuses_it(traces, capsys):
    fast = graphgpt.compile(make_model(), dynamic="seq")
    fast(tokens(2, 8))
    with pytest.raises(graphgpt.InputError, match=r"^cannot compile the forward for inputs \(i64\[2,65\]\): "
                                                  r"sequence length 65 is longer than max_seq_len 64$"):
        fast(tokens(2, 65))  # compiled again (dynamic in seq, as asked) at 65: the model's own refusal, one line
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("graphgpt: recompiling forward: ") and "65" in line
    assert len(fast.cache) == 1 and traces["forward"] == 2
