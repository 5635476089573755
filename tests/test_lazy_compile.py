"""graphgpt.compile(model) without example inputs: traced on first call, one entry per input signature, a cache that
says what it holds and (when asked) why it compiles again or drops an entry, model changes that recompile instead
of running stale, the decorator forms, training steps, threads, and the one-line errors a user can meet.

Tests that need symbolic sizes (one trace serving every batch and length) are in test_lazy_dynamic.py."""

import re
import threading

import numpy as np
import pytest

import graphgpt
from graphgpt import compiler
from graphgpt.nn import functional as F

VOCAB = 65


def make_model(seed=0):
    graphgpt.manual_seed(seed)
    return graphgpt.nn.GPT(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=64)


def tokens(batch, seq_len, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, seq_len))


def eager(model, data):
    return model(graphgpt.Tensor(data)).data


@pytest.fixture(autouse=True)
def quiet_by_default(recompile_explanations):
    """Each test starts with the explanations off and leaves the setting as found."""


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# ---- compile on first call ---------------------------------------------------------------------------------------

def test_compile_without_examples_returns_at_once_and_traces_on_first_call(traces):
    model = make_model()
    fast = graphgpt.compile(model)
    assert isinstance(fast, graphgpt.LazyCompiled) and traces["forward"] == 0
    with pytest.raises(RuntimeError, match="^nothing compiled yet: call it with inputs first$"):
        fast.graph
    assert "nothing compiled yet" in str(fast.cache) and len(fast.cache) == 0

    data = tokens(2, 16)
    lazy = fast(data)
    assert traces["forward"] == 1
    np.testing.assert_array_equal(lazy, graphgpt.compile(model, data).run(data))
    np.testing.assert_array_equal(lazy, eager(model, data))
    np.testing.assert_array_equal(fast.run(tokens(2, 16, seed=1)), eager(model, tokens(2, 16, seed=1)))
    assert traces["forward"] == 2  # the eager-form compile above; the lazy one traced once

    # What a Compiled offers, for the entry used last.
    latest = fast.latest
    assert isinstance(latest, graphgpt.Compiled) and fast.graph is latest.graph
    assert fast.graphs == latest.graphs and fast.ir == latest.ir and "%tokens:i64[2,16]" in fast.ir
    assert fast.report() == latest.report() and fast.stages is latest.stages
    assert fast.render.__self__ is latest and fast.memory_timeline().peak_bytes > 0
    assert [entry.runs for entry in fast.cache] == [2]


def test_dynamic_false_compiles_once_per_signature(traces):
    model = make_model()
    fast = graphgpt.compile(model, dynamic=False)
    signatures = [(batch, seq_len) for seq_len in (8, 16, 31, 64) for batch in (1, 3)]
    for seed in (0, 1):
        for batch, seq_len in signatures:
            data = tokens(batch, seq_len, seed)
            np.testing.assert_array_equal(fast(data), eager(model, data))
    assert traces["forward"] == len(signatures) == 8
    table = fast.cache
    assert [entry.signature for entry in table] == [f"tokens: i64[{b},{t}]" for b, t in signatures]
    assert all(entry.runs == 2 and entry.symbolic == () and entry.kind == "forward" for entry in table)
    assert all(entry.compile_seconds > 0 for entry in table) and [entry.number for entry in table] == list(range(1, 9))
    text = str(table)
    assert text.splitlines()[0] == "compile cache: 8 of at most 8 entries, least recently used first"
    assert "tokens: i64[3,64]" in text and "compile s" in text and "runs" in text


def test_eager_form_still_traces_now(traces):
    model, data = make_model(), tokens(2, 8)
    compiled = graphgpt.compile(model, data)
    assert isinstance(compiled, graphgpt.Compiled) and traces["forward"] == 1
    with pytest.raises(TypeError, match="cache_size_limit bounds the signatures of a lazy compile"):
        graphgpt.compile(model, data, cache_size_limit=2)


# ---- the cache explains itself ---------------------------------------------------------------------------------

def test_a_new_signature_prints_nothing_by_default(capsys):
    fast = graphgpt.compile(make_model(), dynamic=False)
    fast(tokens(2, 16))
    fast(tokens(2, 17))
    assert capsys.readouterr().err == "" and len(fast.cache) == 2


def test_explained_recompile_names_the_input_and_both_types(capsys):
    assert graphgpt.explain_recompiles(True) is None  # the previous setting: the environment's
    fast = graphgpt.compile(make_model(), dynamic=False)
    fast(tokens(2, 16))
    assert stderr_lines(capsys) == []  # the first compile is no recompile
    fast(tokens(2, 17))
    assert stderr_lines(capsys) == ["graphgpt: recompiling forward: input 0 'tokens' changed i64[2,16] -> i64[2,17]"]
    fast(tokens(2, 16, seed=3))
    assert stderr_lines(capsys) == []  # an entry fits
    assert graphgpt.explain_recompiles(False) is True
    fast(tokens(2, 18))
    assert stderr_lines(capsys) == []


def test_the_environment_variable_turns_explanations_on(capsys, monkeypatch):
    monkeypatch.setenv("GRAPHGPT_EXPLAIN_RECOMPILES", "1")
    fast = graphgpt.compile(make_model(), dynamic=False)
    fast(tokens(1, 8))
    fast(tokens(3, 8))
    assert stderr_lines(capsys) == ["graphgpt: recompiling forward: input 0 'tokens' changed i64[1,8] -> i64[3,8]"]
    graphgpt.explain_recompiles(False)  # the call overrides the environment
    fast(tokens(4, 8))
    assert stderr_lines(capsys) == []
    with pytest.raises(TypeError, match="True, False or None"):
        graphgpt.explain_recompiles("yes")


def test_eviction_drops_the_least_recently_used_entry_and_says_so(capsys, traces):
    graphgpt.explain_recompiles(True)
    fast = graphgpt.compile(make_model(), dynamic=False, cache_size_limit=2)
    for seq_len in (8, 16, 8):
        fast(tokens(2, seq_len))
    capsys.readouterr()
    fast(tokens(2, 31))
    assert stderr_lines(capsys) == [  # the closest entry, and of two as close the one used last
        "graphgpt: recompiling forward: input 0 'tokens' changed i64[2,8] -> i64[2,31]",
        "graphgpt: evicting forward entry tokens: i64[2,16] (least recently used; cache_size_limit=2)"]
    assert [entry.signature for entry in fast.cache] == ["tokens: i64[2,8]", "tokens: i64[2,31]"]
    assert "2 of at most 2 entries" in str(fast.cache)
    fast(tokens(2, 16))  # evicted: compiled again
    assert traces["forward"] == 4
    assert stderr_lines(capsys)[-1] == ("graphgpt: evicting forward entry tokens: i64[2,8] (least recently used; "
                                        "cache_size_limit=2)")


def test_automatic_dynamic_passes_the_axes_that_changed(monkeypatch):
    """dynamic=None: static first; a signature differing only in axis 1 recompiles with dynamic="seq", then one
    differing in axis 0 too with both. Only the keyword passed is checked here (test_lazy_dynamic.py checks what
    the symbolic trace then serves)."""
    passed = []
    compile_now = compiler.compile

    def recording_compile(model, *examples, **options):
        passed.append(options.get("dynamic", "absent"))
        return compile_now(model, *examples, **options)

    monkeypatch.setattr(compiler, "compile", recording_compile)
    model = make_model()
    automatic = graphgpt.compile(model)
    for batch, seq_len in ((2, 8), (2, 16), (3, 16), (3, 16)):
        automatic(tokens(batch, seq_len))
    assert passed == ["absent", "seq", ("batch", "seq")]  # the entry it goes dynamic from was so in seq already
    passed.clear()
    static = graphgpt.compile(model, dynamic=False)
    for seq_len in (8, 16):
        static(tokens(2, seq_len))
    assert passed == ["absent", "absent"]
    passed.clear()
    for dynamic, expected in ((True, ("batch", "seq")), ("seq", "seq"), (["seq", "batch"], ("batch", "seq"))):
        graphgpt.compile(model, dynamic=dynamic)(tokens(2, 8))
        assert passed.pop() == expected
    with pytest.raises(ValueError, match=r"dynamic= takes None \(automatic\), False, True"):
        graphgpt.compile(model, dynamic="time")


# ---- model changes invalidate instead of running stale ---------------------------------------------------------

def replace_parameter_frozen(model):
    model.lm_head.weight = graphgpt.nn.Parameter(model.lm_head.weight.data.copy())
    model.lm_head.weight.requires_grad = False


def grow_position_table(model):
    weight = model.position_embedding.weight
    weight.data = np.concatenate([weight.data, np.zeros((16, 32), np.float32)])


def replace_block(model):
    graphgpt.manual_seed(7)
    model.blocks[0] = graphgpt.nn.TransformerBlock(32, 4)


def change_heads(model):
    attention = model.blocks[1].attention
    attention.num_heads, attention.head_dim = 2, 16


CHANGES = [
    (replace_parameter_frozen, graphgpt.ModelChangedError,
     "parameter 'lm_head.weight' has requires_grad=False now, True when compiled"),
    (grow_position_table, graphgpt.InputError,
     r"parameter 'position_embedding.weight' is now f32\[80,32\], but the graph was compiled for f32\[64,32\]"),
    (replace_block, graphgpt.ModelChangedError, "'blocks.0' of the model was replaced since compile"),
    (change_heads, graphgpt.ModelChangedError,
     "attribute 'blocks.1.attention.num_heads' of the model changed 4 -> 2 since compile"),
]
IDS = ["replaced parameter", "parameter shape", "replaced sub-module", "python attribute"]


@pytest.mark.parametrize("change,error,says", CHANGES, ids=IDS)
def test_a_model_change_is_a_one_line_error_in_the_eager_form(change, error, says):
    model, data = make_model(), tokens(2, 8)
    compiled = graphgpt.compile(model, data)
    compiled(data)
    change(model)
    with pytest.raises(error, match=says) as caught:
        compiled(data)
    assert "\n" not in str(caught.value) and "compile again" in str(caught.value)


@pytest.mark.parametrize("change,error,says", CHANGES, ids=IDS)
def test_a_model_change_recompiles_lazily_and_says_why(change, error, says, capsys, traces):
    graphgpt.explain_recompiles(True)
    model, data = make_model(), tokens(2, 8)
    fast = graphgpt.compile(model)
    fast(data)
    change(model)
    np.testing.assert_array_equal(fast(data), eager(model, data))
    assert traces["forward"] == 2
    (line,) = stderr_lines(capsys)
    assert line.startswith("graphgpt: recompiling forward: model changed: ") and "compile again" not in line
    assert re.search(says, line), line
    assert [entry.number for entry in fast.cache] == [2]  # the stale entry was dropped


def test_a_stale_training_step_is_recompiled_before_anything_runs(capsys, traces):
    """The replaced block is found before the stale step updates anything: the parameters after are those of a
    twin model whose step was compiled afresh after the same change."""
    graphgpt.explain_recompiles(True)
    data, targets = tokens(2, 8), tokens(2, 8, seed=1)
    model, twin = make_model(), make_model()
    step = graphgpt.compile(model, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3))
    twin_optimizer = graphgpt.optim.Adam(lr=1e-3)
    step(data, targets)
    graphgpt.compile(twin, data, targets, loss=F.cross_entropy, optimizer=twin_optimizer)(data, targets)
    replace_block(model)
    replace_block(twin)
    loss = step(data, targets)
    twin_loss = graphgpt.compile(twin, data, targets, loss=F.cross_entropy, optimizer=twin_optimizer)(data, targets)
    assert loss == twin_loss and traces["training step"] == 4
    for (name, parameter), (_, twin_parameter) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(parameter.data, twin_parameter.data, err_msg=name)
    assert stderr_lines(capsys) == ["graphgpt: recompiling training step: model changed: 'blocks.0' of the model "
                                    "was replaced since compile"]


def test_a_tensor_replaced_by_one_of_its_type_is_followed_without_recompiling(traces):
    model, data = make_model(), tokens(2, 8)
    fast = graphgpt.compile(model)
    fast(data)
    model.lm_head.weight = graphgpt.nn.Parameter(np.full((32, VOCAB), 0.5, np.float32))
    model.max_seq_len = 64  # an equal value reassigned: nothing the graph depends on changed
    np.testing.assert_array_equal(fast(data), eager(model, data))
    assert traces["forward"] == 1


def test_python_attributes_the_forward_may_read_are_watched():
    model, data = make_model(), tokens(2, 8)
    compiled = graphgpt.compile(model, data)
    model.notes = np.zeros(3)  # not a plain value: not watched
    compiled(data)
    for change, says in [
        (lambda: setattr(model, "temperature", 2.0),
         "attribute 'temperature' of the model changed (not set) -> 2.0 since compile"),
        (lambda: setattr(model, "max_seq_len", 64.0), "attribute 'max_seq_len' of the model changed 64 -> 64.0"),
        (lambda: setattr(model.lm_head, "bias", graphgpt.nn.Parameter(np.zeros(VOCAB, np.float32))),
         "attribute 'lm_head.bias' of the model changed None -> Parameter since compile"),
        (lambda: model.blocks.append(graphgpt.nn.TransformerBlock(32, 4)),
         "'blocks' of the model holds 3 items now, 2 when compiled"),
        (lambda: setattr(model, "extra", graphgpt.nn.LayerNorm(32)),
         "module 'extra' was added to the model since compile"),
    ]:
        saved = {key: value for key, value in vars(model).items()}
        saved_bias, saved_blocks = model.lm_head.bias, list(model.blocks)
        change()
        with pytest.raises(graphgpt.ModelChangedError, match=re.escape(says)) as caught:
            compiled(data)
        assert "\n" not in str(caught.value)
        vars(model).clear()
        vars(model).update(saved)
        model.lm_head.bias, model.blocks[:] = saved_bias, saved_blocks
        compiled(data)  # restored: runs again


# ---- decorators and training steps --------------------------------------------------------------------------------

def test_decorator_forms(traces):
    @graphgpt.compile
    def affine(a, b):
        """a @ b + 1"""
        return a @ b + 1.0

    a, b = np.ones((2, 3), np.float32), np.full((3, 4), 2.0, np.float32)
    assert isinstance(affine, graphgpt.LazyCompiled) and affine.__name__ == "affine" and affine.__doc__ == "a @ b + 1"
    np.testing.assert_array_equal(affine(a, b), a @ b + 1)
    assert [value.name for value in affine.graph.inputs] == ["a", "b"]

    @graphgpt.compile(dynamic=False, cache_size_limit=1)
    def double(x):
        return x * 2.0

    np.testing.assert_array_equal(double(np.ones(3, np.float32)), [2, 2, 2])
    np.testing.assert_array_equal(double(np.ones(4, np.float32)), [2, 2, 2, 2])
    assert [entry.signature for entry in double.cache] == ["x: f32[4]"] and traces["forward"] == 3

    model, data, targets = make_model(), tokens(2, 8), tokens(2, 8, seed=1)
    step = graphgpt.compile(loss=F.cross_entropy)(model)
    assert step.kind == "training step"
    expected = graphgpt.compile(model, data, targets, loss=F.cross_entropy)(data, targets)
    assert step(data, targets) == expected
    with pytest.raises(TypeError, match=r"compile\(None, \.\.\.\)"):
        graphgpt.compile(None, data)
    with pytest.raises(TypeError, match="needs a Module or a function to compile, got ndarray"):
        graphgpt.compile(data)
    with pytest.raises(ValueError, match="cache_size_limit must be a whole number of at least 1, got 0"):
        graphgpt.compile(model, cache_size_limit=0)


def test_lazy_training_step_matches_the_eager_form_step():
    data, targets = tokens(2, 16), tokens(2, 16, seed=1)
    model, twin = make_model(), make_model()
    lazy = graphgpt.compile(model, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3))
    eager_step = graphgpt.compile(twin, data, targets, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3))
    for _ in range(3):
        assert lazy(data, targets) == eager_step(data, targets)
        assert lazy.grads.keys() == eager_step.grads.keys()
        for name, gradient in lazy.grads.items():  # the gradients of that run
            np.testing.assert_array_equal(gradient, eager_step.grads[name], err_msg=name)
    for (name, parameter), (_, twin_parameter) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(parameter.data, twin_parameter.data, err_msg=name)
    assert [(entry.kind, entry.signature, entry.runs) for entry in lazy.cache] == [
        ("training step", "tokens: i64[2,16], targets: i64[2,16]", 3)]


# ---- threads ------------------------------------------------------------------------------------------------------

def test_threads_sharing_one_lazy_model_compile_each_signature_once(traces):
    model = make_model()
    fast = graphgpt.compile(model, dynamic=False)
    batches = [tokens(2, 8), tokens(2, 16)]
    expected = [graphgpt.compile(model, data)(data) for data in batches]
    traces["forward"] = 0
    start = threading.Barrier(4)
    results: dict[int, list] = {}

    def work(worker: int):
        start.wait(30)
        order = (worker % 2, 1 - worker % 2) * 2  # half the threads start with each signature
        results[worker] = [(index, fast(batches[index])) for index in order]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    for worker_results in results.values():
        for index, result in worker_results:
            np.testing.assert_array_equal(result, expected[index])
    assert traces["forward"] == 2
    assert sorted(entry.runs for entry in fast.cache) == [8, 8]


# ---- errors -------------------------------------------------------------------------------------------------------

def test_wrong_inputs_give_one_line_errors(traces):
    model = make_model()
    fast = graphgpt.compile(model)
    data = tokens(2, 8)
    fast(data)
    with pytest.raises(graphgpt.InputError, match=r"^GPT.forward\(tokens, positions=None, cache=None\) cannot take "
                                                  r"4 input\(s\)$"):
        fast(data, data, data, data)
    with pytest.raises(graphgpt.InputError, match=r"^cannot compile the forward for inputs \(i64\[2,8\], i64\[2,8\]\): "
                                                  r"give positions and cache together \(a cached step\), or neither$"):
        fast(data, data)
    with pytest.raises(graphgpt.InputError, match=r"^input 0 \('tokens'\) cannot be a graph input: dtype complex64 "
                                                  r"is not supported"):
        fast(data.astype(np.complex64))
    # Another rank or dtype is a new signature: traced, and what the model (or the tracer) says of it comes back as
    # one line naming the inputs.
    with pytest.raises(graphgpt.InputError, match=r"^cannot compile the forward for inputs \(i64\[8\]\): GPT "
                                                  r"expects tokens of shape \(batch, seq_len\), got \[8\]$"):
        fast(data[0])
    with pytest.raises(graphgpt.InputError, match=r"^cannot compile the forward for inputs \(f32\[2,8\]\): "
                                                  r"embedding: indices must be integers, got f32\[2,8\] at "
                                                  r"token_embedding \(\S*layers\.py:\d+\)$") as caught:
        fast(data.astype(np.float32))
    assert "\n" not in str(caught.value) and caught.value.__cause__ is None
    assert [entry.signature for entry in fast.cache] == ["tokens: i64[2,8]"] and traces["forward"] == 4

    step = graphgpt.compile(model, loss=F.cross_entropy)
    with pytest.raises(graphgpt.InputError, match="^a training step takes the model's inputs and then the targets, "
                                                  r"got 1 input\(s\)"):
        step(data)
    with pytest.raises(graphgpt.InputError, match=r"cannot take 4 input\(s\) \(the last input of a training step"):
        step(data, data, data, data, data)
