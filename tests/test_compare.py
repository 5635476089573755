"""Static vs dynamic comparison: every section and question of the report is there, every figure on the page and
in the table is the Report's own measurement from the same run, the busy warning follows the spreads (synthetic
ones here: no test reads a clock), the graphs it links exist, and the pieces it is built from (spreads, error
bars, the memory timeline, the tape as a graph) are right on their own."""

import copy
import dataclasses
import html
import os
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import graphgpt
from graphgpt.cli import main
from graphgpt.compare import compare
from graphgpt.compare.lesson import LESSON
from graphgpt.compare.measurement import COMPILED, EAGER, REMAT, mib
from graphgpt.compare.page import render_page
from graphgpt.compare.payoff import break_even
from graphgpt.compare.report import BUSY_SHARE, QUESTIONS, SPREAD_RULE, STATIC_ONLY
from graphgpt.memory_timeline import memory_timeline
from graphgpt.nn import functional as F
from graphgpt.render import to_dot
from graphgpt.svg_chart import line_chart
from graphgpt.tape_graph import tape_graph
from graphgpt.timing import WIDE_SPREAD, Spread, interleaved_times, spread_of
from conftest import make_gpt, make_tokens

SVG = "{http://www.w3.org/2000/svg}"


def charts_in(page: str):
    return [ElementTree.fromstring(chunk) for chunk in re.findall(r"<svg .*?</svg>", page, re.S)]


@pytest.fixture(scope="module")
def report():
    return compare(embed=16, layers=1, heads=2, seq_len=8, batch=2, repeats=3, layer_counts=(1, 2),
                   lengths=(4, 8, 16))


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("compare") / "compare.html")
    report.write_html(path, lesson=True)
    return path, open(path, encoding="utf-8").read()


def test_measurements_of_both_sides(report):
    base = report.base
    assert base.loss_difference < 1e-5 and base.worst_gradient[1] < 1e-4
    # Optimised may hold more nodes than traced (flattening batched matmuls adds free reshape views).
    assert base.eager_ops > base.tape_nodes > 0 and base.graph_nodes > 0 and base.optimised_nodes > 0
    assert set(base.times) == {EAGER, COMPILED, REMAT} and all(s.runs == 3 for s in base.times.values())
    assert all(s.low <= s.median <= s.high for s in report.spreads().values())
    # Memory: planned buffers are the compiled step's own, and the timeline's peak lies within them.
    assert base.planned_bytes == {COMPILED: report.graphs[COMPILED].planned_bytes,
                                  REMAT: report.graphs[REMAT].planned_bytes}
    assert 0 < base.timeline.peak_bytes <= base.planned_bytes[COMPILED]
    assert base.footprint(COMPILED) == base.planned_bytes[COMPILED] + base.traced_bytes[COMPILED]
    assert base.footprint(EAGER) == base.traced_bytes[EAGER] > base.traced_bytes[COMPILED]
    # The default passes are exact: joining q/k/v into one matmul changes rounding and is fast math (a matmul
    # written in its reader's layout, matmul_permuted, is still one product).
    assert base.tape_ops["matmul"] == base.graph_forward_ops["matmul"] + base.graph_forward_ops["matmul_permuted"]
    # The base size is measured once and shared with the series holding it.
    assert report.by_layers[0] is base and report.by_length[1] is base
    assert [m.config["seq_len"] for m in report.time_per_op.sizes] == [4, 8, 16]


def test_each_question_is_answered_from_this_run(report):
    static, dynamic = report.static_only, report.dynamic_only
    assert static.rewrites[0][0] == "input" and static.rewrites[-1][1] == report.base.optimised_nodes
    assert static.compile_ops_before_error == 0 < static.tape_ops_before_error
    assert "teaching_models.py" in static.shape_error and "inner dimensions differ" in static.shape_error
    assert static.split.startswith("data parallel: 2 shards") and static.split_difference < 1e-5
    assert [row.label.split()[0] for row in static.remat] == ["without", "the", "under", "under"]
    assert all(row.planned_bytes or row.note.startswith("refused by compile") for row in static.remat)
    rounds = [run.rounds for run in dynamic.runs]
    assert rounds[0] != rounds[1]  # the loop's count depends on the data
    assert dynamic.line.startswith("compare/teaching_models.py:") and "while" in dynamic.source
    assert "cannot use in Python control flow" in dynamic.trace_error
    assert report.agreement.graph_check.passed and report.agreement.tape_check.passed
    assert set(report.agreement.gradient_differences) == set(report.graphs[COMPILED].grads)
    assert report.payoff.same_tokens  # greedy generation: the compiled graphs draw the eager path's tokens
    if static.kernels is None:
        assert "not installed" in static.kernels_note
    else:
        assert static.kernels > 0


def test_break_even_is_the_one_off_cost_over_the_saving():
    assert break_even(10.0, 3.0) == 4 and break_even(9.0, 3.0) == 3 and break_even(0.5, 3.0) == 1
    assert break_even(10.0, 0.0) is None and break_even(10.0, -1.0) is None


def test_page_holds_every_section_and_the_reports_own_figures(report, page):
    path, text = page
    for section in ("figures", "where-time-goes", "payoff", "static-only", *STATIC_ONLY, "dynamic-only",
                    "agreement", "gradients", "graphs", "growth", "timeline", "culprits", "trace-error"):
        assert f'id="{section}"' in text, section
    for question in QUESTIONS.values():
        assert question in text
    for heading, paragraph in report.answers():  # the same paragraphs in the table and on the page
        assert html.escape(paragraph) in text and paragraph.split()[0] in report.table()
    for row in report.figure_rows():
        assert "".join(f"<td>{html.escape(cell)}</td>" for cell in row) in text
    for spread in report.spreads().values():
        assert html.escape(str(spread)) in text
    timeline_chart = charts_in(text)[-1]
    labels = [element.text for element in timeline_chart.iter(f"{SVG}text")]
    base = report.base
    assert f"peak {mib(base.timeline.peak_bytes)}" in labels  # the table's "live at the timeline's peak"
    assert f"planned buffers {mib(base.planned_bytes[COMPILED])}" in labels  # its planned buffers
    assert f"{base.eager_ops} run, {base.tape_nodes} on tape" in text
    for section, explanation in LESSON.items():
        assert html.escape(explanation) in text, section


def test_page_links_graphs_that_exist(report, page):
    path, text = page
    folder = os.path.dirname(path)
    targets = re.findall(r'(?:href|src)="([^"]+)"', text)
    assert len(targets) >= 8 and any(target.endswith("tape.svg") for target in targets)
    for target in targets:
        assert os.path.exists(os.path.join(folder, html.unescape(target))), target
    if hasattr(graphgpt.Compiled, "explore"):  # compiled graphs open in the explorer, the tape as its drawing
        assert {"traced.html", "compiled.html", "rematerialised.html"} <= {os.path.basename(t) for t in targets}
    charts = charts_in(text)
    assert len(charts) == 5  # time and footprint against layers and against length, and the memory timeline
    for chart in charts[:4]:
        assert [line.get("data-name") for line in chart.iter(f"{SVG}polyline")] == \
            ["eager tape", "compiled", "rematerialised"]
    time_chart = charts[0]  # every point of every series has its interquartile range drawn
    assert len([bar for bar in time_chart.iter(f"{SVG}path") if bar.get("class") == "spread"]) == 3 * 2


def calm(spread: Spread) -> Spread:
    return Spread(spread.median, spread.median * 0.99, spread.median * 1.01, spread.runs)


def with_spreads(report, make):
    """A copy of `report` (without its graphs) whose every time is make(time)."""
    changed = copy.deepcopy(dataclasses.replace(report, graphs={}))
    holders = [m.times for m in (changed.base, *changed.by_layers, *changed.by_length)]
    holders += [changed.payoff.times, changed.static_only.times]
    for times in holders:
        times.update({name: make(spread) for name, spread in times.items()})
    return changed


def test_busy_warning_follows_the_spreads(report):
    quiet = with_spreads(report, calm)
    assert quiet.busy_warning() is None and quiet.spread_note() is None
    assert "WARNING" not in quiet.table() and "Note:" not in quiet.table()
    page = render_page(quiet, {}, lesson=False)
    assert 'id="busy-warning"' not in page and 'id="spread-note"' not in page
    assert html.escape(SPREAD_RULE) in page and SPREAD_RULE in quiet.table()

    noisy = with_spreads(report, calm)  # one wide time: a noisy contender, not a busy machine
    noisy.base.times[EAGER] = Spread(10.0, 8.0, 13.0, 3)  # interquartile range 50% of the median
    note = noisy.spread_note()
    assert noisy.busy_warning() is None and note is not None and "eager tape step 50%" in note
    assert "Note: " + note in noisy.table() and html.escape(note) in render_page(noisy, {}, lesson=False)

    def wide(spread: Spread) -> Spread:
        return Spread(spread.median, spread.median * 0.7, spread.median * 1.3, spread.runs)

    def with_wide(count: int, total: int = 20):
        """The report, its times replaced by `total` of which the first `count` spread wide."""
        changed = with_spreads(report, calm)
        times = {f"time {index}": (wide if index < count else calm)(Spread(10.0, 10.0, 10.0, 7))
                 for index in range(total)}
        changed.spreads = lambda: times
        return changed

    at_share = int(BUSY_SHARE * 20)
    assert with_wide(at_share).busy_warning() is None and with_wide(at_share).spread_note() is not None
    assert with_wide(at_share + 1).busy_warning() is not None and with_wide(at_share + 1).spread_note() is None
    count = len(report.spreads())
    busy = with_spreads(report, wide)
    warning = busy.busy_warning()
    assert warning is not None and f"{count} of {count} times" in warning and f"{WIDE_SPREAD:.0%}" in warning
    assert busy.spread_note() is None
    assert "WARNING: " + warning in busy.table()
    assert html.escape(warning) in render_page(busy, {}, lesson=False)


def test_page_without_numba_says_so(report):
    note = "Numba is not installed here: pip install numba to see the generated kernels and their time."
    without = dataclasses.replace(report, static_only=dataclasses.replace(
        report.static_only, kernels=None, kernels_note=note, times={
            name: spread for name, spread in report.static_only.times.items() if name != "numba kernels"}))
    assert without.static_only.paragraphs()["kernels"] == note
    assert html.escape(note) in render_page(without, {}, lesson=False) and note in " ".join(without.table().split())


def test_page_without_lesson_has_no_lesson_text(report):
    text = render_page(report, {}, lesson=False)
    assert 'class="lesson"' not in text and not any(html.escape(t) in text for t in LESSON.values())


def test_spread_is_median_and_quartiles_and_flags_a_wide_one():
    seconds = [0.004, 0.0041, 0.0045, 0.005, 0.02]
    spread = spread_of(seconds)
    assert (spread.low, spread.median, spread.high) == pytest.approx(np.percentile(seconds, [25, 50, 75]) * 1e3)
    assert str(spread) == "4.50 ms [4.10-5.00]" and not spread.wide
    assert Spread(10.0, 9.0, 9.0 + 10 * WIDE_SPREAD, 5).wide is False  # exactly at the threshold: not wide
    assert Spread(10.0, 9.0, 9.01 + 10 * WIDE_SPREAD, 5).wide is True
    with pytest.raises(ValueError, match="at least one timing"):
        spread_of([])


def test_tape_graph_is_the_tape_drawn_like_a_traced_graph():
    model = make_gpt()
    tokens, targets = make_tokens(17, 2, 8), make_tokens(17, 2, 8, seed=1)
    token_tensor, target_tensor = graphgpt.Tensor(tokens), graphgpt.Tensor(targets)
    loss = F.cross_entropy(model(token_tensor), target_tensor)
    traced = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=[])
    graph = tape_graph(loss, dict(model.named_parameters()), {"tokens": token_tensor, "targets": target_tensor},
                       like=traced.graph)
    tape, _ = loss._tape()
    assert [node.op for node in graph.nodes if node.op != "constant"] == [entry.op for entry in tape]
    assert [value.name for value in graph.inputs] == ["tokens", "targets"]
    assert {value.name for value in graph.params} == {name for name, _ in model.named_parameters()}
    assert graph.outputs[0].type.shape == () and graph.header == "eager tape"
    # Module paths lent by the trace: the tape's matmuls sit in the modules that ran them.
    assert all(node.provenance.module_path for node in graph.nodes if node.op == "matmul")
    assert "cluster_blocks" in to_dot(graph).source
    unlabelled = tape_graph(loss, dict(model.named_parameters()))
    assert all(not node.provenance.module_path for node in unlabelled.nodes)


def test_memory_timeline_matches_the_plan():
    model = make_gpt()
    tokens = make_tokens(17, 2, 8)
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy)
    timeline = step.memory_timeline()
    assert timeline.live_bytes == memory_timeline(step.graph).live_bytes  # the plan it runs, or a new one
    assert len(timeline.live_bytes) == len(step.graph.nodes)
    assert 0 < timeline.peak_bytes <= step.planned_bytes
    assert timeline.peak_bytes == max(timeline.live_bytes)
    assert len(timeline.culprits) == 5 and all(size > 0 for _, size in timeline.culprits)
    assert "blocks." in timeline.describe() and "peak" in timeline.describe()
    chart = ElementTree.fromstring(timeline.svg(planned_bytes=step.planned_bytes))
    assert f"planned buffers {mib(step.planned_bytes)}" in [text.text for text in chart.iter(f"{SVG}text")]


def test_line_chart_escapes_and_plots_every_series_with_its_spread():
    svg = line_chart({"a<b": [(1, 2.0), (2, 3.0)], "c": [(1, 1.0)]}, "t&t", "x", "y", marker=(1.5, "peak"),
                     spreads={"a<b": [(1, 1.5, 2.5), (2, 2.0, 9.0)]}, level=(4.0, "cap"))
    root = ElementTree.fromstring(svg)
    assert [line.get("data-name") for line in root.iter(f"{SVG}polyline")] == ["a<b", "c"]
    assert [bar.get("data-name") for bar in root.iter(f"{SVG}path")] == ["a<b", "a<b"]
    texts = [text.text for text in root.iter(f"{SVG}text")]
    assert "t&t" in texts and "cap" in texts
    tops = [float(re.findall(r"[\d.]+", bar.get("d"))[1]) for bar in root.iter(f"{SVG}path")]
    assert all(top >= 56 for top in tops)  # the axis reaches the highest bar (9.0): within the plot's margin


def test_cli_compare_writes_the_lesson(tmp_path, capsys):
    out = str(tmp_path / "c.html")
    assert main(["compare", "--embed", "8", "--layers", "1", "--heads", "2", "--seq-len", "4", "--batch", "1",
                 "--repeats", "1", "--lesson", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "eager tape vs compiled graph" in printed and "When does compiling pay off?" in printed
    # A batch of one cannot be split: the report says why, in compile's words, and goes on.
    assert "compile(..., shards=2) refused: cannot split this training step into 2" in printed
    text = open(out).read()
    assert len(charts_in(text)) == 5 and 'class="lesson"' in text
    assert os.path.exists(str(tmp_path / "c_graphs" / "tape.svg"))


def test_interleaved_times_run_every_contender_each_repetition_warm_when_asked():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_times(runs, repeats=4)
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(sorted(calls[index:index + 3]) == ["a", "b", "c"] for index in range(0, 12, 3))
    calls.clear()
    interleaved_times(runs, repeats=2, warm_each=True)
    assert len(calls) == 12 and all(calls[index] == calls[index + 1] for index in range(0, 12, 2))
    keyed = interleaved_times({("size", 1): lambda: None, ("size", 2): lambda: None}, repeats=2)
    assert set(keyed) == {("size", 1), ("size", 2)}  # any hashable names
