"""Data-parallel training steps: the proof that a batch splits exactly (passes/data_parallel.py), and the split
step (passes/program.py, passes/sharded_run.py) computing the same loss, gradients and updates as the whole-batch step."""

import numpy as np
import pytest

import graphgpt
from graphgpt.trace_entry import trace_loss
from graphgpt.passes.schedule import ExecutionError
from graphgpt.nn import functional as F
from graphgpt.passes import infer_shapes
from graphgpt.passes.data_parallel import prove_split, shard_mismatch

from conftest import make_gpt, make_tokens


def forward_graph(model, inputs, loss):
    return infer_shapes(trace_loss(model, inputs, loss).graph)


def gpt_batch(batch=4, seq_len=8, vocab=17, dtype="float32"):
    model = make_gpt(vocab=vocab).to(dtype)
    return model, make_tokens(vocab, batch, seq_len, seed=1), make_tokens(vocab, batch, seq_len, seed=2)


def split_terms(graph, shards):
    """(batch means, batch sums) of the loss when the proof admits the split, else the refusal."""
    proof, problem = prove_split(graph, shards)
    return (proof.means, proof.sums) if proof else problem


def test_the_gpt_with_cross_entropy_splits_as_one_batch_mean():
    model, tokens, targets = gpt_batch()
    assert split_terms(forward_graph(model, (tokens, targets), F.cross_entropy), 2) == (1, 0)
    assert split_terms(forward_graph(model, (tokens, targets), F.cross_entropy), 4) == (1, 0)


def test_a_sum_loss_and_a_mean_shifted_by_a_penalty_split():
    model, tokens, targets = gpt_batch()

    def summed(logits, targets):
        return (logits * logits).sum()

    def penalised(logits, targets):
        return F.cross_entropy(logits, targets) * 0.5 + (model.lm_head.weight * model.lm_head.weight).sum()

    assert split_terms(forward_graph(model, (tokens, targets), summed), 2) == (0, 1)
    assert split_terms(forward_graph(model, (tokens, targets), penalised), 2) == (1, 0)


@pytest.mark.parametrize("loss, says", [
    (lambda logits, targets: (logits - logits.mean(axis=0, keepdims=True)).mean(),
     "combines a per-example value with a reduction over the batch"),
    (lambda logits, targets: logits.sum(axis=(1, 2)).max(axis=(0,)), "reduces over the batch axis"),
    (lambda logits, targets: F.cross_entropy(logits, targets) * F.cross_entropy(logits, targets),
     "multiplies two batch reductions"),
    (lambda logits, targets: (logits.sum(axis=(0,)) * logits.sum(axis=(0,))).mean(), "multiplies two batch"),
    (lambda logits, targets: F.cross_entropy(logits, targets).exp(), "applies exp to a batch reduction"),
    (lambda logits, targets: (logits - logits.sum()).sum(), "combines a per-example value with a reduction"),
    (lambda logits, targets: F.cross_entropy(logits[:1], targets[:1]), "slices the batch axis"),
    (lambda logits, targets: graphgpt.Tensor(np.ones((), np.float32)) * 2.0, "not a mean or sum over the batch"),
    (lambda logits, targets: logits.max(axis=(0, 1, 2)), "not a sum or a mean"),
])
def test_losses_that_mix_examples_are_refused_with_the_node_named(loss, says):
    model, tokens, targets = gpt_batch()
    proof, problem = prove_split(forward_graph(model, (tokens, targets), loss), 2)
    assert proof is None and says in problem and "node %" in problem


def test_a_batch_that_does_not_divide_is_refused():
    model, tokens, targets = gpt_batch(batch=3)
    proof, problem = prove_split(forward_graph(model, (tokens, targets), F.cross_entropy), 2)
    assert proof is None and "'tokens'" in problem and "2 shards" in problem


def test_a_model_whose_code_depends_on_the_batch_size_is_caught_by_the_shard_trace():
    model, tokens, targets = gpt_batch()

    def batch_dependent(tokens):
        logits = model(tokens)
        return logits * 2.0 if tokens.shape[0] > 2 else logits

    whole = forward_graph(batch_dependent, (tokens, targets), F.cross_entropy)
    shard = forward_graph(batch_dependent, (tokens[:2], targets[:2]), F.cross_entropy)
    proof, _ = prove_split(whole, 2)
    assert "depends on the batch size" in shard_mismatch(whole, shard, proof)
    same = forward_graph(model, (tokens[:2], targets[:2]), F.cross_entropy)
    whole = forward_graph(model, (tokens, targets), F.cross_entropy)
    assert shard_mismatch(whole, same, prove_split(whole, 2)[0]) is None


def compile_pair(model, tokens, targets, **options):
    return (graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1, **options),
            graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=2, **options))


def test_split_step_gives_the_whole_steps_loss_and_gradients_in_float64():
    model, tokens, targets = gpt_batch(dtype="float64")
    whole, split = compile_pair(model, tokens, targets)
    assert split.split.shards == 2 and whole.split.shards == 1
    loss_whole, loss_split = whole.run(tokens, targets), split.run(tokens, targets)
    np.testing.assert_allclose(loss_split, loss_whole, rtol=1e-13)
    assert set(split.grads) == set(whole.grads)
    for name, gradient in whole.grads.items():
        np.testing.assert_allclose(split.grads[name], gradient, rtol=1e-10, atol=1e-13, err_msg=name)


def test_split_step_in_float32_within_rounding_and_stable_across_runs():
    model, tokens, targets = gpt_batch(batch=8)
    whole, split = compile_pair(model, tokens, targets)
    loss_whole = whole.run(tokens, targets)
    largest = max(np.abs(gradient).max() for gradient in whole.grads.values())
    for _ in range(2):  # the second run reuses every buffer
        np.testing.assert_allclose(split.run(tokens, targets), loss_whole, rtol=1e-6)
        for name, gradient in whole.grads.items():
            if name.endswith("k_proj.bias"):
                # Zero in exact arithmetic (softmax ignores a shift shared by every key score): both sides are
                # rounding noise (1e-12 to 1e-9 here, as the BLAS kernel rounds), so only its size is comparable.
                assert max(np.abs(split.grads[name]).max(), np.abs(gradient).max()) <= 1e-6 * largest, name
                continue
            scale = np.abs(gradient).max() + 1e-6
            np.testing.assert_allclose(split.grads[name] / scale, gradient / scale, atol=1e-5, err_msg=name)


def test_split_training_with_adam_updates_weights_as_the_whole_step_does():
    models = [gpt_batch(dtype="float64")[0] for _ in range(2)]
    _, tokens, targets = gpt_batch(dtype="float64")
    steps = [graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=shards,
                              optimizer=graphgpt.optim.Adam(lr=1e-2, clip_grad_norm=1.0))
             for model, shards in zip(models, (1, 2))]
    for _ in range(3):
        losses = [step.run(tokens, targets) for step in steps]
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)
    whole, split = (dict(model.named_parameters()) for model in models)
    for name, parameter in whole.items():
        # The key projections' bias has a zero gradient in exact arithmetic (softmax ignores a shift shared by
        # every key score): its float gradient is rounding noise of order 1e-13, which differs with the order
        # of the shards' sums and which Adam's normalisation scales up. Only its size is comparable.
        atol = 1e-10 if name.endswith("k_proj.bias") else 1e-12
        np.testing.assert_allclose(split[name].data, parameter.data, rtol=1e-9, atol=atol, err_msg=name)
    assert not np.array_equal(whole["lm_head.weight"].data, gpt_batch(dtype="float64")[0].lm_head.weight.data)


def test_forced_split_that_cannot_hold_raises_with_the_reason():
    model, tokens, targets = gpt_batch(batch=4)
    with pytest.raises(ValueError, match="cannot split this training step into 3 data-parallel shards.*'tokens'"):
        graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=3)
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=0)


def test_default_does_not_split_a_small_step_and_says_why():
    model, tokens, targets = gpt_batch()
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy)
    assert step.split.shards == 1
    assert "data parallel: not split" in step.report() and ("too little" in step.report() or "core" in step.report())


def test_report_of_a_split_step_says_how_it_runs():
    model, tokens, targets = gpt_batch(batch=8)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=2)
    assert "data parallel: 2 shards on 2 threads (batch 8 as 2 x 4, loss from 1 batch mean, summed over shards)" in step.report()


def test_a_failure_in_either_shard_names_the_node_and_the_next_run_works():
    model, tokens, targets = gpt_batch(batch=4)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=2)
    for bad_row in (0, 3):  # in the shard run on this thread, then in the one run on the pool's thread
        bad = targets.copy()
        bad[bad_row, 0] = 99
        with pytest.raises(ExecutionError, match="cross_entropy.*target out of range"):
            step.run(tokens, bad)
    np.testing.assert_allclose(step.run(tokens, targets),
                               graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=1)
                               .run(tokens, targets), rtol=1e-6)


@pytest.mark.parametrize("kind", ["sum", "penalised mean"])
def test_sum_losses_and_shifted_means_combine_exactly(kind):
    model, tokens, targets = gpt_batch(dtype="float64")

    def loss(logits, targets):
        if kind == "sum":
            return (logits * logits).sum()
        return F.cross_entropy(logits, targets) + (model.lm_head.weight * model.lm_head.weight).sum()

    whole, split = (graphgpt.compile(model, tokens, targets, loss=loss, shards=shards) for shards in (1, 2))
    np.testing.assert_allclose(split.run(tokens, targets), whole.run(tokens, targets), rtol=1e-13)
    for name, gradient in whole.grads.items():
        np.testing.assert_allclose(split.grads[name], gradient, rtol=1e-10, atol=1e-13, err_msg=name)


class TwoBiases(graphgpt.nn.Module):
    """Two parameters with one gradient (after common-subexpression elimination, one graph value), and one the
    loss does not read (its gradient a constant zero, in no buffer)."""

    def __init__(self):
        self.gpt = make_gpt().to("float64")
        self.a = graphgpt.tensor.Parameter(np.zeros(17), dtype="float64")
        self.b = graphgpt.tensor.Parameter(np.zeros(17), dtype="float64")
        self.unused = graphgpt.tensor.Parameter(np.zeros(3), dtype="float64")

    def forward(self, tokens):
        return self.gpt(tokens) + self.a + self.b


def test_outputs_that_are_one_value_are_each_summed_once():
    model = TwoBiases()
    _, tokens, targets = gpt_batch()
    whole, split = (graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=shards)
                    for shards in (1, 2))
    last = split.graph.outputs
    assert last[split.gradient_names.index("a") + 1].id == last[split.gradient_names.index("b") + 1].id
    whole.run(tokens, targets)
    split.run(tokens, targets)
    for _ in range(2):
        split.run(tokens, targets)
    assert not split.grads["unused"].any()
    for name in ("a", "b", "unused", "gpt.lm_head.weight"):
        np.testing.assert_allclose(split.grads[name], whole.grads[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_shards_without_a_loss_is_refused():
    model, tokens, _ = gpt_batch()
    with pytest.raises(TypeError, match="shards splits a training step"):
        graphgpt.compile(model, tokens, shards=2)


def test_a_slice_that_differs_at_the_shard_batch_is_caught():
    model, tokens, targets = gpt_batch()

    def batch_dependent_slice(logits, targets):
        # the same ops and types at either batch size, but other positions of the sequence
        kept = logits[:, 1:] if logits.shape[0] > 2 else logits[:, :-1]
        return F.cross_entropy(kept, targets[:, 1:])

    whole = forward_graph(model, (tokens, targets), batch_dependent_slice)
    shard = forward_graph(model, (tokens[:2], targets[:2]), batch_dependent_slice)
    proof, problem = prove_split(whole, 2)
    assert problem is None
    assert "attribute slices" in shard_mismatch(whole, shard, proof)
    with pytest.raises(ValueError, match="attribute slices"):
        graphgpt.compile(model, tokens, targets, loss=batch_dependent_slice, shards=2)


def test_inputs_with_different_axes_0_are_refused():
    model = graphgpt.nn.Linear(3, 2)
    x = np.ones((4, 3), np.float32)
    examples = (x, np.ones((2, 2), np.float32), np.ones((4, 2), np.float32))
    graph = forward_graph(lambda x, y: model(x) + y.sum(), examples, lambda out, t: (out * t).sum())
    proof, problem = prove_split(graph, 2)
    assert proof is None and "axes 0 differ" in problem
