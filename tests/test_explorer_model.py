"""The explorer's model of a compiled program (graphgpt/explorer/model.py), checked against the graphs themselves:
every value once, in the right box, backward boxes beside the forward ones, differentiates links, counts and FLOPs
adding up; and the page it writes fetches nothing."""

import base64
import gzip
import json
import re

import numpy as np
import pytest

import graphgpt
from graphgpt.explorer import ExplorerError
from graphgpt.explorer.hierarchy import module_parts
from graphgpt.explorer.model import explorer_model
from graphgpt.nn import functional as F
from graphgpt.passes.analysis import graph_flops
from graphgpt.passes.saved_activations import saved_values

from conftest import make_gpt, make_tokens


@pytest.fixture(scope="module")
def step():
    model = make_gpt(layers=2)
    tokens = make_tokens(17, 2, 8)
    return graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=graphgpt.optim.AdamW(lr=1e-3),
                            shards=1)


@pytest.fixture(scope="module")
def model(step):
    return explorer_model([(entry.name, entry.stages) for entry in step.program.graphs])


def fields(model):
    return {name: position for position, name in enumerate(model["fields"])}


def box_path(graph_model, index):
    names = []
    while index >= 0:
        name, index = graph_model["boxes"][index][0], graph_model["boxes"][index][1]
        names.insert(0, name)
    return tuple(names)


def test_every_value_of_every_stage_is_in_the_model_exactly_once(step, model):
    graph_model = model["graphs"][0]
    at = fields(model)
    ids = [row[at["id"]] for row in graph_model["values"]]
    assert len(ids) == len(set(ids))
    expected = {value.id for record in step.stages for value in record.graph.values()}
    assert set(ids) == expected
    for stage, record in enumerate(step.stages):  # present at a stage exactly when that stage's graph has it
        present = {row[at["id"]] for row in graph_model["values"]
                   if any(variant[0] & (1 << stage) for variant in row[at["variants"]])}
        assert present == {value.id for value in record.graph.values()}, record.name
    for index, (name, parent, kind, twin) in enumerate(graph_model["boxes"]):
        assert parent < index  # a tree, parents first


def test_forward_nodes_sit_in_their_module_and_backward_nodes_beside_it(step, model):
    graph_model = model["graphs"][0]
    at = fields(model)
    graph = step.stages[0].graph
    by_id = {node.output.id: node for node in graph.nodes}
    tops = {box_path(graph_model, index)[0] for index, row in enumerate(graph_model["boxes"]) if row[1] == -1}
    assert {"token_embedding", "position_embedding", "blocks.0", "blocks.1", "ln_f", "lm_head", "loss",
            "optimizer", "blocks.0 backward", "blocks.1 backward", "lm_head backward", "loss backward"} <= tops
    for row in graph_model["values"]:
        node = by_id.get(row[at["id"]])
        if node is None:
            continue
        box = box_path(graph_model, row[at["box"]])
        role = node.provenance.role
        if role == "forward" and node.provenance.module_path:
            assert box == module_parts(node.provenance.module_path), node.describe()
        elif role == "backward":
            assert box[0].endswith(" backward") or box == ("backward",), node.describe()  # the model's own ops
            forward = by_id.get(node.provenance.differentiates)
            if forward is not None and forward.provenance.module_path:
                assert box == (box[0], *module_parts(forward.provenance.module_path)[1:])
                assert box[0] == module_parts(forward.provenance.module_path)[0] + " backward"
        elif role == "optimizer":
            assert box[0] == "optimizer"
    for name, parent, kind, twin in graph_model["boxes"]:  # each top-level backward box points at its forward box
        if parent == -1 and name.endswith(" backward"):
            assert graph_model["boxes"][twin][0] == name[:-len(" backward")]
            assert model["box_kinds"][kind] == "backward"


def test_differentiates_links_name_the_forward_node(step, model):
    graph_model = model["graphs"][0]
    at = fields(model)
    values = graph_model["values"]
    by_id = {node.output.id: node for record in step.stages for node in record.graph.nodes}
    links = 0
    for row in values:
        node = by_id.get(row[at["id"]])
        expected = node.provenance.differentiates if node is not None else None
        if expected is None or expected not in by_id:
            assert row[at["differentiates"]] == -1
        else:
            assert values[row[at["differentiates"]]][at["id"]] == expected
            links += 1
    assert links > 50


def test_counts_flops_and_saved_activations_add_up_per_stage(step, model):
    graph_model = model["graphs"][0]
    at = fields(model)
    for stage, record in enumerate(step.stages):
        variants = [variant for row in graph_model["values"] if row[at["kind"]] == 2
                    for variant in row[at["variants"]] if variant[0] & (1 << stage)]
        assert len(variants) == len(record.graph.nodes) == graph_model["stages"][stage]["nodes"]
        assert sum(variant[3] for variant in variants) == graph_flops(record.graph) == graph_model["stages"][stage]["flops"]
        saved = {row[at["id"]] for row in graph_model["values"] if row[at["saved"]] & (1 << stage)}
        assert saved == saved_values(record.graph)
    blocks = [row for row in graph_model["values"] if row[at["kind"]] == 2 and row[at["variants"]][0][0] & 1
              and box_path(graph_model, row[at["box"]])[:1] == ("blocks.1",)]
    expected = [node for node in step.stages[0].graph.nodes if node.provenance.role == "forward"
                and module_parts(node.provenance.module_path)[:1] == ("blocks.1",)]
    assert len(blocks) == len(expected) > 0


def test_the_last_stage_carries_the_memory_plan(step, model):
    graph_model = model["graphs"][0]
    at = fields(model)
    record = step.stages[-1]
    plan = record.plan
    by_id = {row[at["id"]]: row for row in graph_model["values"]}
    for position, node in enumerate(record.graph.nodes):
        kind, buffer, made, last, _ = by_id[node.output.id][at["plan"]]
        assert (kind, buffer) == (plan.storage[node.output.id].kind, plan.storage[node.output.id].buffer)
        assert made == position and last >= position
    assert graph_model["buffers"] == plan.buffer_bytes


def test_the_page_is_self_contained_and_carries_the_model(step, tmp_path):
    path = step.explore(str(tmp_path / "step.html"))
    page = open(path, encoding="utf-8").read()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//|@import|fetch\(|XMLHttpRequest|importScripts""", page)
    packed = re.search(r'<script type="application/octet-stream" id="explorer-model">([^<]*)</script>', page)
    carried = json.loads(gzip.decompress(base64.b64decode(packed.group(1))))
    assert carried["graphs"][0]["stages"][-1]["nodes"] == len(step.graph.nodes)
    assert "Copyright (c) 2012-2014 Chris Pettitt" in open(
        __import__("graphgpt.explorer", fromlist=["x"]).__path__[0] + "/static/vendor/LICENSE-dagre.txt").read()


def test_a_forward_compile_and_a_split_step_explore(tmp_path):
    model = make_gpt(layers=1)
    tokens = make_tokens(17, 2, 8)
    forward = graphgpt.compile(model, tokens)
    assert forward.explore(str(tmp_path / "forward.html"), stage="traced").endswith("forward.html")
    split = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=2)
    page = explorer_model([(entry.name, entry.stages) for entry in split.program.graphs])
    assert [graph["name"] for graph in page["graphs"]] == list(split.graphs)


def carried_model(path):
    page = open(path, encoding="utf-8").read()
    packed = re.search(r'<script type="application/octet-stream" id="explorer-model">([^<]*)</script>', page)
    return json.loads(gzip.decompress(base64.b64decode(packed.group(1))))


def test_generated_kernels_are_carried_with_the_values_they_compute(tmp_path):
    """backend="numba": each graph lists its kernels by the number compiled.kernels() and the text IR give them,
    with their source and the values they compute; the NumPy backend's page lists none."""
    pytest.importorskip("numba", reason="generated kernels need numba (pip install numba)")
    model = make_gpt(layers=1)
    tokens = make_tokens(17, 4, 8)
    split = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=2, backend="numba",
                             optimizer=graphgpt.optim.SGD(lr=0.1))
    carried = carried_model(split.explore(str(tmp_path / "numba.html")))
    listing, text = split.kernels(), split.ir
    seen = with_helpers = 0
    for graph in carried["graphs"]:
        for number, source, computed in graph["kernels"]:
            # the kernel's module as compiled.kernels() lists it, then each module it imports (the helpers)
            own, *imported = source.split("\n# ---- graphgpt_kernel_")
            assert own in listing and f"# ==== kernel {number} of " in listing
            assert bool(imported) == ("\nfrom graphgpt_kernel_" in own)
            assert all(module.split(", imported above ----\n", 1)[1] in listing for module in imported)
            with_helpers += bool(imported)
            for position in computed:
                label = graph["values"][position][1]
                assert any(line.strip().startswith(f"{label}:") and line.endswith(f"  kernel {number}")
                           for line in text.splitlines()), (label, number)
                seen += 1
    shard, *_, combine = split.program.schedules  # every shard's schedule runs the same nodes
    assert seen == len(shard.kernels) + len(combine.kernels) > 0 and with_helpers > 0
    assert all(graph["kernels"] == [] for graph in carried_model(
        graphgpt.compile(model, tokens).explore(str(tmp_path / "numpy.html")))["graphs"])


def test_refusals_say_what_was_expected_and_what_came(step, tmp_path):
    with pytest.raises(ExplorerError, match=r"expected a file name ending in \.html, got '.*g\.svg'"):
        step.explore(str(tmp_path / "g.svg"))
    with pytest.raises(ExplorerError, match=r"expected an existing folder .* got '.*missing'"):
        step.explore(str(tmp_path / "missing" / "g.html"))
    with pytest.raises(ExplorerError, match=r"expected stage= one of 'traced', 'simplify'.* got 'inlined'"):
        step.explore(str(tmp_path / "g.html"), stage="inlined")
    with pytest.raises(ExplorerError, match=r"expected graph= one of 'training step', got 'combine'"):
        step.explore(str(tmp_path / "g.html"), graph="combine")
    for message in ("g.svg", "inlined"):
        assert "\n" not in message
