"""Gradient buckets of a split step (passes/gradient_buckets.py): which gradients join, that joining them changes
no bit of a run (loss, gradients, weights and optimizer state against the same split step without buckets), and
that the combine graph's update reads the summed bucket itself rather than joining its pieces again."""

import numpy as np
import pytest

import graphgpt
from graphgpt.ir import TensorType
from graphgpt.ir.dims import Dim
from graphgpt.nn import functional as F
from graphgpt.optim import AdamW
from graphgpt.passes import gradient_buckets, program_build
from graphgpt.passes.joined_runs import JOINED_ELEMENTS
from conftest import make_gpt, make_tokens


def test_a_bucket_is_a_run_the_optimizer_joins():
    """Consecutive gradients of one dtype and known sizes, at most JOINED_ELEMENTS in all: one that large alone."""
    large = JOINED_ELEMENTS // 2
    types = [TensorType((3, 2), "float32"), TensorType((4,), "float32"), TensorType((), "float32"),
             TensorType((5,), "float64"), TensorType((2,), "float64"), TensorType((Dim.symbol("T"), 2), "float32"),
             TensorType((3,), "float32"), TensorType((large,), "float32"), TensorType((large - 3,), "float32"),
             TensorType((1, 2 * large), "float32"), TensorType((4,), "float32")]
    buckets = gradient_buckets.gradient_buckets([f"p{index}" for index in range(len(types))], types)
    assert buckets.buckets == ((0, 1, 2), (3, 4), (5,), (6, 7, 8), (9,), (10,))
    assert [buckets.bucket_name(bucket) for bucket in buckets.buckets][:3] == [
        "grad.<p0 to p2>", "grad.<p3 to p4>", "grad.p5"]
    assert buckets.bucket_type((0, 1, 2)) == TensorType((11,), "float32") and buckets.bucket_type((9,)) == types[9]
    optimizer = AdamW([graphgpt.Parameter(np.zeros(1, np.float32))])  # the optimizer's runs over the same tensors
    assert optimizer._joined_runs(types) == [list(bucket) for bucket in buckets.buckets]


def split_run(model, tokens, joined: bool, monkeypatch, steps=3):
    if not joined:  # each gradient its own output, summed on its own, as before buckets
        monkeypatch.setattr(program_build, "join_gradients", lambda graph, names: (
            graph, gradient_buckets.GradientBuckets(tuple(names), tuple(value.type for value in graph.outputs[1:]),
                                                    tuple((position,) for position in range(len(names))))))
    optimizer = AdamW(lr=0.01, clip_grad_norm=1.0)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=optimizer, shards=2)
    monkeypatch.undo()
    losses = [step.run(tokens, tokens) for _ in range(steps)]
    grads = {name: np.array(gradient) for name, gradient in step.grads.items()}
    return step, losses, grads, {name: p.data.copy() for name, p in model.named_parameters()}, \
        optimizer.state_dict()["state"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_buckets_change_no_bit_of_a_split_step(dtype, monkeypatch):
    tokens = make_tokens(17, 4, 8)
    step, *bucketed = split_run(make_gpt().to(dtype), tokens, True, monkeypatch)
    apart_step, *apart = split_run(make_gpt().to(dtype), tokens, False, monkeypatch)
    assert [value.name for value in step.graphs["combine"].inputs] == [
        "sum_of_shards.loss", "sum_of_shards.grad.<token_embedding.weight to lm_head.weight>"]
    assert len(apart_step.graphs["combine"].inputs) == 1 + len(step.grads)
    for got, want in zip(bucketed, apart):
        if isinstance(got, dict):
            assert got.keys() == want.keys()
            for name in got:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_array_equal(got, want)


def test_the_update_reads_the_summed_bucket_without_joining_its_pieces():
    model, tokens = make_gpt(), make_tokens(17, 4, 8)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=AdamW(lr=0.01), shards=2)
    combine = step.graphs["combine"]
    bucket = combine.inputs[1]
    joins = [node for node in combine.nodes if node.op == "concat"]
    assert len(joins) == 1 and all(value.kind == "param" or value.producer.op == "reshape"
                                   for value in joins[0].inputs)  # only the weights are joined
    assert any(bucket in node.inputs for node in combine.nodes if node.provenance.role == "optimizer")
