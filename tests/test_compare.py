"""Static vs dynamic comparison, the memory timeline and the SVG charts: the report's numbers agree with direct
measurements, its HTML holds the sections and parseable charts it promises, and the CLI writes it."""

import re
import xml.etree.ElementTree as ElementTree


import graphgpt
from graphgpt.cli import main
from graphgpt.compare import compare
from graphgpt.memory_timeline import memory_timeline
from graphgpt.nn import functional as F
from graphgpt.svg_chart import line_chart
from conftest import make_gpt, make_tokens

SVG = "{http://www.w3.org/2000/svg}"


def charts_in(page: str):
    return [ElementTree.fromstring(chunk) for chunk in re.findall(r"<svg .*?</svg>", page, re.S)]


def test_comparison_report(tmp_path):
    report = compare(embed=16, layers=1, heads=2, seq_len=8, batch=2, repeats=1, layer_counts=(1, 2),
                     lengths=(4, 8))
    base = report.base
    assert base.loss_difference < 1e-5 and base.worst_gradient[1] < 1e-4
    # Optimised may hold more nodes than traced (flattening batched matmuls adds free reshape views).
    assert base.eager_ops > base.tape_nodes > 0 and base.graph_nodes > 0 and base.optimised_nodes > 0
    assert base.eager_ms > 0 and base.compiled_ms > 0 and base.compiled_peak_bytes > 0
    assert base.remat_ms > 0 and 0 < base.remat_peak_bytes  # the rematerialised step: remat_policy="mincut"
    # The default passes are exact: joining q/k/v into one matmul changes rounding and is fast math.
    assert base.tape_ops["matmul"] == base.graph_forward_ops["matmul"]
    table = report.table()
    assert "eager tape" in table and "growth with layers: 1:" in table and "merged or removed: " in table
    assert "rematerialised" in table.splitlines()[1]
    assert table.startswith("GPT, 16 wide, 1 layer, 2 heads, sequences of 8, batch 2: eager tape vs compiled")
    page = open(report.write_html(str(tmp_path / "compare.html"))).read()
    for section in ('id="table"', 'id="verdict"', 'id="agreement"', 'id="ops"', 'id="culprits"'):
        assert section in page
    charts = charts_in(page)
    assert len(charts) == 5  # time and memory against layers and against length, and the memory timeline
    for chart in charts[:4]:
        names = [line.get("data-name") for line in chart.iter(f"{SVG}polyline")]
        assert names == ["eager", "compiled", "rematerialised"]


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
    ElementTree.fromstring(timeline.svg())


def test_line_chart_escapes_and_plots_every_series():
    svg = line_chart({"a<b": [(1, 2.0), (2, 3.0)], "c": [(1, 1.0)]}, "t&t", "x", "y", marker=(1.5, "peak"))
    root = ElementTree.fromstring(svg)
    assert [line.get("data-name") for line in root.iter(f"{SVG}polyline")] == ["a<b", "c"]
    assert "t&t" in [text.text for text in root.iter(f"{SVG}text")]


def test_cli_compare(tmp_path, capsys):
    out = str(tmp_path / "c.html")
    assert main(["compare", "--embed", "8", "--layers", "1", "--heads", "2", "--seq-len", "4", "--batch", "1",
                 "--repeats", "1", "--out", out]) == 0
    assert "eager tape vs compiled graph" in capsys.readouterr().out
    assert len(charts_in(open(out).read())) == 5


def test_interleaved_times_run_every_contender_each_repetition_warm_when_asked():
    from graphgpt.timing import interleaved_times

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_times(runs, repeats=4)
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(sorted(calls[index:index + 3]) == ["a", "b", "c"] for index in range(0, 12, 3))
    calls.clear()
    interleaved_times(runs, repeats=2, warm_each=True)
    assert len(calls) == 12 and all(calls[index] == calls[index + 1] for index in range(0, 12, 2))
