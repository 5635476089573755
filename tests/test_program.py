"""The Program (passes/program.py): what a user sees of a compiled step is what runs. A split step's report,
text IR, diagram and memory timeline show the shard and combine graphs that run; one Compiled runs correctly
from several threads; every optional pass gives a split step the whole step's results."""

import re
import threading

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from graphgpt.passes.manager import DEFAULT_PIPELINE, OPTIONAL_PASSES

from conftest import make_gpt, make_tokens


def split_step(batch=4, **options):
    model = make_gpt()
    tokens, targets = make_tokens(17, batch, 8, seed=1), make_tokens(17, batch, 8, seed=2)
    return model, tokens, targets, graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, shards=2, **options)


def test_a_split_step_runs_and_reports_its_shard_and_combine_graphs():
    _, _, _, step = split_step(optimizer=graphgpt.optim.AdamW(lr=1e-3))
    assert list(step.graphs) == ["shard (batch 2 of 4)", "combine"]
    report = step.report()
    assert "== shard (batch 2 of 4), one copy per shard, 2 at once ==" in report
    assert "== combine ==" in report and "== training step (for study: not run) ==" in report
    assert "data parallel: 2 shards" in report
    assert "# ---- shard (batch 2 of 4) ----" in step.ir and "# ---- combine ----" in step.ir
    shard, combine = step.program.graphs
    assert shard.graph.inputs[0].type.shape == (2, 8) and step.graph.inputs[0].type.shape == (4, 8)
    roles = {node.provenance.role for node in combine.graph.nodes}
    assert roles == {"optimizer", "combine"}  # the update runs once, on the summed gradients
    # the shards return their gradients joined into one bucket; the combine graph cuts its sum apart (views)
    assert [value.name for value in combine.graph.inputs] == [
        "sum_of_shards.loss", "sum_of_shards.grad.<token_embedding.weight to lm_head.weight>"]
    assert {node.op for node in combine.graph.nodes if node.provenance.role == "combine"} <= {"slice", "reshape"}
    assert not any(node.provenance.role == "optimizer" for node in shard.graph.nodes)
    # the schedules run exactly these graphs, over the plans the report measured
    schedules = step.program.schedules
    assert [schedule.graph for schedule in schedules] == [shard.graph, shard.graph, combine.graph]
    assert schedules[0].plan is shard.plan and schedules[-1].plan is combine.plan
    assert step.memory_timeline().live_bytes == shard.plan.timeline(shard.graph).live_bytes
    assert len(step.memory_timeline("combine").live_bytes) == len(combine.graph.nodes)


def test_an_unsplit_step_runs_its_one_graph():
    model = make_gpt()
    tokens = make_tokens(17, 2, 8)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1)
    assert list(step.graphs) == ["training step"] and step.program.whole is step.program.graphs[0]
    assert step.program.schedules[0].graph is step.graph
    assert "for study" not in step.report() and "not split (shards=1)" in step.report()


def drawn_nodes(svg_text: str) -> dict[int, set[int]]:
    """Graph number -> ids of the values drawn for it, from the SVG's node titles ('g0_v12')."""
    drawn: dict[int, set[int]] = {}
    for graph_number, value_id in re.findall(r"<title>g(\d+)_v(\d+)</title>", svg_text):
        drawn.setdefault(int(graph_number), set()).add(int(value_id))
    return drawn


def test_the_nodes_rendered_are_the_nodes_executed(tmp_path):
    _, _, _, step = split_step(optimizer=graphgpt.optim.SGD(lr=0.1))
    path = step.render(str(tmp_path / "step.svg"))
    drawn = drawn_nodes(open(path).read())
    shard_schedule, combine_schedule = step.program.schedules[0], step.program.schedules[-1]
    for number, schedule in enumerate((shard_schedule, combine_schedule)):
        executed = {step_.node.output.id for step_ in schedule.steps} | {
            node.output.id for _, _, node in schedule.fixed_views}
        constants = {node.output.id for node in schedule.graph.nodes if node.op == "constant"}
        leaves = {value.id for value in (*schedule.graph.inputs, *schedule.graph.params)}
        assert drawn[number] == executed | constants | leaves, number
    assert set(drawn) == {0, 1}


def test_one_compiled_run_from_several_threads_gives_the_single_threaded_results():
    model = make_gpt()
    batches = [make_tokens(17, 4, 8, seed=seed) for seed in range(4)]
    forward = graphgpt.compile(model, batches[0])
    steps = [graphgpt.compile(model, batches[0], batches[1], loss=F.cross_entropy, shards=shards)
             for shards in (1, 2)]
    expected_logits = [forward.run(batch) for batch in batches]
    expected_losses = [[step.run(batch, batch) for batch in batches] for step in steps]
    failures = []

    def work(thread):
        for repeat in range(25):
            index = (thread + repeat) % len(batches)
            if not np.array_equal(forward.run(batches[index]), expected_logits[index]):
                failures.append(("forward", thread, repeat))
            for step, losses in zip(steps, expected_losses):
                if not np.array_equal(step.run(batches[index], batches[index]), losses[index]):
                    failures.append((step.split.shards, thread, repeat))

    threads = [threading.Thread(target=work, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


@pytest.mark.parametrize("optional_pass", OPTIONAL_PASSES)
def test_every_optional_pass_gives_a_split_step_the_whole_steps_results(optional_pass):
    model = make_gpt().to("float64")
    tokens, targets = make_tokens(17, 4, 8, seed=1), make_tokens(17, 4, 8, seed=2)
    passes = [*DEFAULT_PIPELINE, optional_pass]
    whole, split = (graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=passes, shards=shards)
                    for shards in (1, 2))
    assert any(record.name == optional_pass for record in split.stages)
    for _ in range(2):  # the second run reuses every buffer and every scratch block
        np.testing.assert_allclose(split.run(tokens, targets), whole.run(tokens, targets), rtol=1e-12)
        for name, gradient in whole.grads.items():
            np.testing.assert_allclose(split.grads[name], gradient, rtol=1e-10, atol=1e-13, err_msg=name)


def test_render_of_one_named_graph_and_stage(tmp_path):
    _, _, _, step = split_step()
    assert step.render(str(tmp_path / "c.svg"), graph="combine").endswith("c.svg")
    assert step.render(str(tmp_path / "w.svg"), graph="training step", stage="input").endswith("w.svg")
    with pytest.raises(ValueError, match="no graph 'nope'; graphs: shard \\(batch 2 of 4\\), combine, training"):
        step.render(str(tmp_path / "x.svg"), graph="nope")
