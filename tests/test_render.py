"""Diagrams: the SVGs are parsed (not just found) for module clusters, labels with shapes, node styles, backward
links, saved activations, fused groups and escaping; large graphs collapse; the per-pass index links real
before/after diagrams with the changes marked; without `dot` the .dot source is written with an install hint."""

import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import graphgpt
import graphgpt.render as render
from graphgpt.cli import main
from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.nn import functional as F
from conftest import fuse_elementwise_at_any_size, make_gpt, make_tokens

SVG = "{http://www.w3.org/2000/svg}"


def parse(path):
    root = ElementTree.parse(path).getroot()
    titles = [element.text for element in root.iter(f"{SVG}title")]
    texts = [element.text or "" for element in root.iter(f"{SVG}text")]
    return root, titles, texts


def test_forward_diagram_has_module_clusters_and_typed_labels(tmp_path):
    model = make_gpt(vocab=11, embed=8, layers=2, heads=2)
    path = graphgpt.compile(model, make_tokens(11, 1, 4), passes=[]).render(str(tmp_path / "forward.svg"))
    root, titles, texts = parse(path)
    for block in ("0", "1"):
        for part in ("", ".attention", ".mlp", ".ln1", ".attention.q_proj", ".mlp.linear1"):
            assert f"cluster_blocks.{block}{part}" in titles
    assert any("layer_norm" in text for text in texts) and "f32[1,4,8]" in texts
    assert "%tokens" in texts and "i64[1,4]" in texts
    fills = {element.get("fill") for element in root.iter(f"{SVG}polygon")} | \
        {element.get("fill") for element in root.iter(f"{SVG}path")} | \
        {element.get("fill") for element in root.iter(f"{SVG}ellipse")}
    assert {render.STYLES["param"]["fillcolor"], render.STYLES["input"]["fillcolor"]} <= fills


def test_training_diagram_marks_backward_links_and_saved_activations(tmp_path):
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 1, 4)
    train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, passes=[])
    assert len(train.graph.nodes) < render.AUTO_COLLAPSE_NODES
    root, titles, texts = parse(train.render(str(tmp_path / "train.svg")))
    fills = {element.get("fill") for element in root.iter()}
    assert render.STYLES["backward"]["fillcolor"] in fills
    links = [anchor for anchor in root.iter(f"{SVG}a")
             if anchor.get("{http://www.w3.org/1999/xlink}title") == "differentiates"]
    assert len(links) > 50
    saved = [text for text in texts if text.startswith("saved ")]
    assert saved and all(re.fullmatch(r"saved \d+(\.\d)? (B|KiB|MiB)", text) for text in saved)


def test_fused_groups_are_drawn_with_their_program(tmp_path):
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 1, 4)
    train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy,
                             passes=["eliminate_dead_nodes", fuse_elementwise_at_any_size])
    root, _, texts = parse(render.render_graph(train.graph, str(tmp_path / "fused.svg")))
    assert any("fused_elementwise" in text for text in texts)
    assert render.STYLES["fused"]["fillcolor"] in {element.get("fill") for element in root.iter()}
    # the attention scores' scale and mask listed inside their node (indented: an op's own node is unindented)
    assert any(text.startswith(" ") and text.strip() == "mul" for text in texts)


def test_labels_are_escaped(tmp_path):
    builder = GraphBuilder()
    x = builder.add_input('x<&>"', TensorType((2,), "float32"))
    y = builder.add_node("exp", [x])
    graph = builder.finish([y])
    _, titles, texts = parse(render.render_graph(graph, str(tmp_path / "odd.svg")))
    assert '%x<&>"' in texts


def test_large_graphs_collapse_to_modules(tmp_path):
    model = make_gpt(vocab=11, embed=8, layers=9, heads=2)
    tokens = make_tokens(11, 1, 4)
    train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=0.1),
                             passes=[])
    assert len(train.graph.nodes) > render.AUTO_COLLAPSE_NODES
    _, _, texts = parse(train.render(str(tmp_path / "big.svg")))
    assert any("collapsed" in text for text in texts)
    assert {"blocks.0", "blocks.0 [backward]", "(optimizer)"} <= set(texts)
    _, _, overview = parse(train.render(str(tmp_path / "overview.svg"), collapse=1))
    assert "blocks" in overview and "blocks.0" not in overview


def test_pass_index_links_before_and_after_diagrams(tmp_path):
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    compiled = graphgpt.compile(model, make_tokens(11, 1, 4))
    index = compiled.render_passes(str(tmp_path / "passes"))
    page = open(index).read()
    stages = re.findall(r"data-stage='([^']+)'", page)
    assert stages == [stage.name for stage in compiled.stages]
    for link in re.findall(r'href="([^"]+)"', page):
        ElementTree.parse(tmp_path / "passes" / link)  # every linked diagram exists and is valid SVG
    cse = next(stage for stage in compiled.stages if stage.name == "eliminate_common_subexpressions")
    assert f"<td>{cse.nodes}</td>" in page and "nodes merged" in page
    before = (tmp_path / "passes" / "03_eliminate_common_subexpressions_before.svg").read_text()
    after = (tmp_path / "passes" / "01_simplify_after.svg").read_text()  # batched matmuls flattened: created
    assert before.count('stroke="#cc0000"') >= len(cse.removed)
    assert 'stroke="#38a13b"' in after


def test_without_dot_the_source_is_written_with_an_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    graph = graphgpt.compile(lambda x: x.exp(), np.ones(2, np.float32)).graph
    written = render.render_graph(graph, str(tmp_path / "g.svg"))
    assert written.endswith("g.dot") and "digraph" in open(written).read()
    assert "apt-get install graphviz" in capsys.readouterr().err


def test_formats_and_refusals(tmp_path):
    graph = graphgpt.compile(lambda x: x.exp(), np.ones(2, np.float32)).graph
    assert open(render.render_graph(graph, str(tmp_path / "g.png")), "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="use one of .svg, .png, .pdf"):
        render.render_graph(graph, str(tmp_path / "g.txt"))
    with pytest.raises(ValueError, match="no stage 'nope'"):
        graphgpt.compile(lambda x: x.exp(), np.ones(2, np.float32)).render(str(tmp_path / "h.svg"), stage="nope")


def test_cli_render_and_ir(tmp_path, capsys):
    assert main(["render", "--stage", "train", "--out", str(tmp_path / "t.svg")]) == 0
    ElementTree.parse(capsys.readouterr().out.strip())
    assert main(["ir", "--stage", "optimised"]) == 0
    assert capsys.readouterr().out.startswith("# ---- training step ----\n# graph (eliminate_dead_nodes)")


def test_cli_render_passes_as_the_readme_writes_it(tmp_path, capsys):
    """`graphgpt render --passes --out passes/` draws the training step through the default passes (the forward
    as traced goes through none, which left a page with one row), and the page says why the count moved."""
    assert main(["render", "--passes", "--out", str(tmp_path / "passes")]) == 0
    page = open(capsys.readouterr().out.strip()).read()
    stages = re.findall(r"data-stage='([^']+)'", page)
    assert stages[0] == "input" and "simplify" in stages and "eliminate_dead_nodes" in stages
    counts = [int(count) for count in re.findall(r"data-stage='[^']+'><td>[^<]+</td><td>(\d+)</td>", page)]
    assert f"nodes: {counts[0]} as traced -&gt; {counts[-1]} after {len(counts) - 1} passes" in page
    assert "added on purpose by flatten batched matmul" in page


def test_titles_say_what_the_graph_holds(tmp_path):
    """A diagram's title names the parts of the program it draws, not the pass that last rewrote it."""
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 1, 4)
    forward = graphgpt.compile(model, tokens, passes=[])
    train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, passes=[])
    with_update = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, passes=[],
                                   optimizer=graphgpt.optim.SGD(model.parameters(), lr=0.1))
    for compiled, expected in ((forward, "forward: "), (train, "training step: forward + backward, "),
                               (with_update, "training step: forward + backward + optimizer update, ")):
        _, _, texts = parse(compiled.render(str(tmp_path / "g.svg")))
        title = f"{expected}{len(compiled.graph.nodes)} nodes"
        assert title in texts and not any("append_" in text for text in texts), (title, texts[:3])


def test_the_report_explains_the_node_count():
    model = make_gpt(vocab=11, embed=8, layers=1, heads=2)
    tokens = make_tokens(11, 1, 4)
    compiled = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy)
    stages = compiled.stages
    moves = [f"{after.name} {after.nodes - before.nodes:+d}" for before, after in zip(stages, stages[1:])
             if after.nodes != before.nodes]
    assert (f"nodes: {stages[0].nodes} as traced -> {stages[-1].nodes} after {len(stages) - 1} passes: "
            f"{', '.join(moves)}") in compiled.report()


def test_cli_shows_the_graphs_a_split_step_runs(tmp_path, capsys):
    assert main(["ir", "--stage", "optimised", "--shards", "2", "--batch", "4", "--layers", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# ---- shard (batch 2 of 4) ----") and "\n# ---- combine ----\n" in text
    assert main(["render", "--stage", "train", "--shards", "2", "--batch", "4", "--out", str(tmp_path / "s.svg")]) == 0
    drawn = open(capsys.readouterr().out.strip()).read()
    assert "shard (batch 2 of 4), one copy per shard, 2 at once: forward + backward" in drawn
    # no optimizer: the combine graph only cuts the shards' summed gradient bucket into each parameter's gradient
    assert re.search(r">combine: sum of the shards, \d+ nodes<", drawn)
    assert "sum_of_shards.grad.&lt;token_embedding.weight to lm_head.weight&gt;" in drawn
    with pytest.raises(SystemExit, match="cannot split this training step into 3"):
        main(["ir", "--stage", "train", "--shards", "3", "--batch", "4"])


def test_a_failing_dot_falls_back_to_the_module_overview_then_to_source(tmp_path, monkeypatch, capsys):
    graph = graphgpt.compile(make_gpt(vocab=11, embed=8, layers=1, heads=2), make_tokens(11, 1, 4)).graph
    real = render._run_dot
    calls = []

    def crash_on_full_drawing(source, file_format, output):
        calls.append(source)
        return "dot exited with -6: merge_chain assertion" if len(calls) == 1 else real(source, file_format, output)

    monkeypatch.setattr(render, "_run_dot", crash_on_full_drawing)
    path = render.render_graph(graph, str(tmp_path / "g.svg"))
    _, _, texts = parse(path)
    assert any("collapsed: dot failed" in text for text in texts)
    assert "drew" in capsys.readouterr().err
    monkeypatch.setattr(render, "_run_dot", lambda *args: "dot took more than 120 s")
    assert render.render_graph(graph, str(tmp_path / "h.svg")).endswith("h.dot")
    assert "dot could not draw it" in capsys.readouterr().err
