"""The step profile (passes/profile.py): every step of what runs is timed once per repetition and attributed to the
right category and role, the model is left untouched, a split step is profiled shard and combine, and bad
requests are refused in one line. No time is asserted: only which steps were timed and how they add up."""

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from graphgpt.passes.profile import CATEGORIES
from conftest import make_gpt, make_tokens


def step_of(**options):
    model = make_gpt(vocab=13, embed=16, layers=2, heads=2)
    tokens, targets = make_tokens(13, 4, 8), make_tokens(13, 4, 8, seed=1)
    return model, graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, **options), tokens, targets


def test_every_step_is_timed_once_and_the_sums_agree():
    _, step, tokens, targets = step_of(shards=1)
    profile = step.profile(tokens, targets, repeats=3)
    [schedule] = step.program.schedules
    assert [timed.node for timed in profile.steps] == [entry.node for entry in schedule.steps]
    assert all(timed.seconds > 0 for timed in profile.steps)
    assert set(profile.seconds_by("category")) <= set(CATEGORIES)
    for key in ("category", "role", "op", "graph"):
        assert sum(profile.seconds_by(key).values()) == pytest.approx(profile.seconds)
    matmuls = [timed for timed in profile.steps if timed.node.op == "matmul"]
    assert matmuls and all(timed.category == "GEMM" for timed in matmuls)
    assert {"forward", "backward"} <= set(profile.seconds_by("role"))
    table = profile.table()
    costliest = max(profile.seconds_by("op").items(), key=lambda item: item[1])[0]
    assert "by category:" in table and "GEMM" in table and f"costliest ops: {costliest} " in table
    # the same schedule run whole, through its generated code: what is left over is the Python between the steps
    assert profile.run_seconds > 0
    assert profile.between_steps_seconds == pytest.approx(profile.run_seconds - profile.seconds)
    assert f"run whole: {profile.run_seconds * 1e3:.1f} ms" in table


def test_recomputed_forward_ops_are_their_own_role():
    _, step, tokens, targets = step_of(shards=1, remat_policy="checkpoint_blocks")
    profile = step.profile(tokens, targets, repeats=1)
    recomputed = [timed for timed in profile.steps if timed.role == "recompute"]
    assert recomputed and profile.seconds_by("role")["recompute"] == pytest.approx(
        sum(timed.seconds for timed in recomputed))


def test_profiling_a_step_with_an_optimizer_leaves_the_model_untouched():
    model, step, tokens, targets = step_of(shards=1, optimizer=graphgpt.optim.AdamW(lr=0.1))
    before = {name: parameter.data.copy() for name, parameter in model.named_parameters()}
    profile = step.profile(tokens, targets, repeats=2)
    assert "optimizer" in profile.seconds_by("role")
    for name, parameter in model.named_parameters():
        np.testing.assert_array_equal(parameter.data, before[name], err_msg=name)


def test_a_split_step_is_profiled_shard_then_combine():
    _, step, tokens, targets = step_of(shards=2, optimizer=graphgpt.optim.SGD(lr=0.1))
    assert step.split.shards == 2
    profile = step.profile(tokens, targets, repeats=1)
    shard, combine = step.program.graphs
    assert list(profile.seconds_by("graph")) == [shard.name, combine.name]
    assert profile.split and "one shard's graph" in profile.table()


def test_bad_requests_are_refused_in_one_line():
    _, step, tokens, targets = step_of(shards=1)
    with pytest.raises(ValueError, match="repeats must be a whole number of at least 1, got 0"):
        step.profile(tokens, targets, repeats=0)
    with pytest.raises(graphgpt.InputError):
        step.profile(tokens[:, :3], targets)


@pytest.mark.parametrize("backend", ["numba"])
def test_generated_kernels_are_their_own_category(backend):
    pytest.importorskip("numba", reason="the numba backend's kernels need numba (pip install numba)")
    _, step, tokens, targets = step_of(shards=1, backend=backend)
    profile = step.profile(tokens, targets, repeats=1)
    assert step.kernels() and profile.seconds_by("category").get("generated kernels", 0) > 0
