"""Tracing and gradient recording are per thread: a compile in one thread does not trace eager code in another,
no_grad() in one thread does not stop another thread's tape, and each trace's provenance names its own model.

Every test runs real threads and compares each value exactly with the same work done single-threaded."""

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

import graphgpt
from conftest import make_gpt, make_tokens
from graphgpt.nn import functional as F

VOCAB, BATCH, SEQ_LEN = 17, 2, 8
ROUNDS = 12  # compiles, traces or steps per thread: enough overlap to catch shared state, still about a second
WAIT_SECONDS = 30  # a guard against a hung test, never reached when the code is right


def token_batch():
    """(tokens, next-token targets) for the small GPT of conftest.make_gpt."""
    return make_tokens(VOCAB, BATCH, SEQ_LEN, seed=0), make_tokens(VOCAB, BATCH, SEQ_LEN, seed=1)


def eager_loss(model, tokens, targets):
    return F.cross_entropy(model(graphgpt.Tensor(tokens)), graphgpt.Tensor(targets))


def eager_step(model, tokens, targets):
    """One eager forward and backward from zeroed gradients: (loss, {parameter name: gradient})."""
    model.zero_grad()
    loss = eager_loss(model, tokens, targets)
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"no gradient for {name}"
        gradients[name] = parameter.grad.copy()
    return loss.data.copy(), gradients


def assert_same_step(actual, expected):
    (loss, gradients), (expected_loss, expected_gradients) = actual, expected
    assert np.array_equal(loss, expected_loss)
    assert gradients.keys() == expected_gradients.keys()
    for name, gradient in gradients.items():
        assert np.array_equal(gradient, expected_gradients[name]), name


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT_SECONDS), "the other thread never got there"


def run_then_signal(done: threading.Event, work) -> list:
    """work() ROUNDS times, then set `done` (also on failure, so the other thread stops waiting)."""
    try:
        return [work() for _ in range(ROUNDS)]
    finally:
        done.set()


def repeat_until(done: threading.Event, work) -> list:
    """work() at least once and again until `done` is set: busy for as long as the other thread works."""
    results = [work()]
    while not done.is_set():
        results.append(work())
    return results


def test_eager_training_in_one_thread_while_another_thread_compiles():
    tokens, targets = token_batch()
    expected_step = eager_step(make_gpt(), tokens, targets)
    expected_graph = str(graphgpt.compile(make_gpt(), tokens).graph)
    eager_model, compiled_model = make_gpt(), make_gpt()  # built here: make_gpt seeds one process-wide generator
    eager_started, compiles_done = threading.Event(), threading.Event()

    def train_eagerly_until_compiles_are_done():
        eager_started.set()
        return repeat_until(compiles_done, lambda: eager_step(eager_model, tokens, targets))

    def compile_while_eager_training_runs():
        wait_for(eager_started)  # inside run_then_signal's work, so a failure here still stops the eager thread
        return str(graphgpt.compile(compiled_model, tokens).graph)

    with ThreadPoolExecutor(1) as pool:
        eager_steps = pool.submit(train_eagerly_until_compiles_are_done)
        graphs = run_then_signal(compiles_done, compile_while_eager_training_runs)
        steps = eager_steps.result(WAIT_SECONDS)

    for graph in graphs:
        assert graph == expected_graph
    for step in steps:
        assert_same_step(step, expected_step)


def test_no_grad_held_in_one_thread_does_not_stop_backward_in_another():
    tokens, targets = token_batch()
    expected_step = eager_step(make_gpt(), tokens, targets)
    model = make_gpt()
    inside_no_grad, work_done = threading.Event(), threading.Event()

    def hold_no_grad_until_work_is_done():
        with graphgpt.no_grad():
            inside_no_grad.set()
            wait_for(work_done)

    def train_while_no_grad_is_held():
        wait_for(inside_no_grad)
        return run_then_signal(work_done, lambda: eager_step(model, tokens, targets))

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(hold_no_grad_until_work_is_done)
        steps = pool.submit(train_while_no_grad_is_held).result(WAIT_SECONDS)
        holder.result(WAIT_SECONDS)

    for step in steps:
        assert_same_step(step, expected_step)


def test_a_thread_inside_no_grad_records_nothing_while_another_thread_records():
    tokens, targets = token_batch()
    expected_step = eager_step(make_gpt(), tokens, targets)
    expected_loss = expected_step[0]
    untracked_model, trained_model = make_gpt(), make_gpt()
    inside_no_grad, training_done = threading.Event(), threading.Event()

    def forward_inside_no_grad_until_training_is_done():
        with graphgpt.no_grad():
            inside_no_grad.set()
            return repeat_until(training_done, lambda: eager_loss(untracked_model, tokens, targets))

    def train_while_the_other_thread_is_inside_no_grad():
        wait_for(inside_no_grad)
        return run_then_signal(training_done, lambda: eager_step(trained_model, tokens, targets))

    with ThreadPoolExecutor(2) as pool:
        untracked = pool.submit(forward_inside_no_grad_until_training_is_done)
        steps = pool.submit(train_while_the_other_thread_is_inside_no_grad).result(WAIT_SECONDS)
        losses = untracked.result(WAIT_SECONDS)

    for loss in losses:
        assert not loss.requires_grad and loss._creator is None
        assert np.array_equal(loss.data, expected_loss)
    assert all(parameter.grad is None for parameter in untracked_model.parameters())
    for step in steps:
        assert_same_step(step, expected_step)


class TwoLayerMLP(graphgpt.nn.Module):
    """A model whose module paths ('encoder', 'decoder') share nothing with the GPT's but the root ''."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.embedding = graphgpt.nn.Embedding(vocab, width)
        self.encoder = graphgpt.nn.Linear(width, width)
        self.decoder = graphgpt.nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.decoder(self.encoder(self.embedding(tokens)).gelu())


def node_module_paths(model, tokens) -> list[str]:
    """The module path of every node of the model's graph as traced, in order."""
    return [node.provenance.module_path for node in graphgpt.trace(model, tokens).graph.nodes]


def test_two_threads_tracing_different_models_get_only_their_own_module_paths():
    tokens, _ = token_batch()
    gpt = make_gpt()
    graphgpt.manual_seed(0)
    mlp = TwoLayerMLP(VOCAB, 8)
    expected = {model: node_module_paths(model, tokens) for model in (gpt, mlp)}
    for model, paths in expected.items():
        assert set(paths) <= {path for path, _ in model.named_modules()}
    assert set(expected[gpt]) - {""} and set(expected[mlp]) - {""}
    assert not (set(expected[gpt]) & set(expected[mlp])) - {""}
    both_ready = threading.Barrier(2, timeout=WAIT_SECONDS)
    traced_enough = {model: threading.Event() for model in (gpt, mlp)}

    def trace_while_the_other_thread_traces(model, other):
        both_ready.wait()
        trace_once = partial(node_module_paths, model, tokens)
        return run_then_signal(traced_enough[model], trace_once) + repeat_until(traced_enough[other], trace_once)

    with ThreadPoolExecutor(2) as pool:
        traced = {model: pool.submit(trace_while_the_other_thread_traces, model, other)
                  for model, other in ((gpt, mlp), (mlp, gpt))}
        results = {model: future.result(WAIT_SECONDS) for model, future in traced.items()}

    for model, all_paths in results.items():
        for paths in all_paths:
            assert paths == expected[model]


def test_manual_seed_in_one_thread_builds_the_same_model_whatever_another_thread_draws():
    expected = {name: parameter.data.copy() for name, parameter in make_gpt(seed=4).named_parameters()}
    started = threading.Barrier(2)

    def build_seeded():
        started.wait(WAIT_SECONDS)
        return [{name: p.data.copy() for name, p in make_gpt(seed=4).named_parameters()} for _ in range(5)]

    def draw_meanwhile():
        started.wait(WAIT_SECONDS)
        for _ in range(40):
            graphgpt.nn.Linear(32, 32)

    with ThreadPoolExecutor(2) as pool:
        drawing = pool.submit(draw_meanwhile)
        built = pool.submit(build_seeded).result(WAIT_SECONDS)
        drawing.result(WAIT_SECONDS)
    for parameters in built:
        assert parameters.keys() == expected.keys()
        assert all(np.array_equal(parameters[name], expected[name]) for name in expected)
