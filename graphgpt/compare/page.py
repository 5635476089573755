"""The comparison as an HTML page: the figures table, each question with its figure and its measured answer, the
graphs side by side and linked, growth charts with their spread, and the compiled step's memory timeline. Every
number comes from the Report (one run); with `lesson`, short explanations (lesson.py) sit between the figures.
"""

from __future__ import annotations

import html
import os

from ..svg_chart import line_chart
from ..timing import milliseconds
from .graphs import PASSES, TAPE, TRACED, DrawnGraph, draw_graphs
from .lesson import LESSON
from .measurement import COMPILED, EAGER, REMAT, VOCAB, describe_config, mib
from .payoff import COMPILE_GENERATION, COMPILE_STEP, COMPILED_GENERATE, EAGER_GENERATE
from .report import CONTENDERS, NAMES, QUESTIONS, SPREAD_RULE, STATIC_ONLY, Report, size_label
from .static_only import COMPILE_TO_ERROR, NUMBA, SHARDED, TAPE_TO_ERROR

escape = html.escape
STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 16px;line-height:1.4}
td,th{padding:3px 9px;text-align:right} td:first-child,th:first-child,td.text{text-align:left}
table{border-collapse:collapse} tr:nth-child(even){background:#f4f4f4} th{border-bottom:1px solid #999}
.answer{background:#eef4fb;border-left:4px solid #1f77b4;padding:8px 12px}
.lesson{color:#333;font-style:italic;border-left:4px solid #ccc;padding:4px 12px}
.warning{background:#fdecea;border-left:4px solid #d62728;padding:8px 12px}
.note{background:#fff8e1;border-left:4px solid #ff7f0e;padding:8px 12px}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap}
.side{display:flex;gap:16px} .side figure{flex:1;min-width:0;margin:0;border:1px solid #ccc}
.side .scroll{max-height:640px;overflow:auto;background:#fff} .side img{display:block;width:100%}
.charts{display:flex;flex-wrap:wrap;gap:8px} .charts .chart{flex:1 1 45%} .charts svg{width:100%;height:auto}"""


def write_page(report: Report, path: str, lesson: bool) -> str:
    drawn = draw_graphs(report.graphs, path)
    with open(path, "w", encoding="utf-8") as page:
        page.write(render_page(report, drawn, lesson))
    return path


def _table(header, rows, table_id: str = "", text_columns=()) -> str:
    """An HTML table; numbers align right, the columns in `text_columns` (sentences) left."""
    head = "".join(f"<th>{escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td{' class=text' * (index in text_columns)}>{escape(str(cell))}</td>"
                                    for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f'<table{f" id={chr(34)}{table_id}{chr(34)}" if table_id else ""}><tr>{head}</tr>{body}</table>'


def _answer(section: str, text: str) -> str:
    return f'<p class="answer" data-answer="{section}">{escape(text)}</p>'


def render_page(report: Report, drawn: dict, lesson: bool) -> str:
    def explain(section: str) -> str:
        return f'<p class="lesson" data-lesson="{section}">{escape(LESSON[section])}</p>' if lesson else ""

    b = report.base
    warning, note = report.busy_warning(), report.spread_note()
    parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>static graph vs dynamic tape</title>'
             f'<style>{STYLE}</style></head><body>',
             f"<h1>Static graph vs dynamic tape</h1>",
             f'<p id="subject">{escape(describe_config(b.config))}, vocabulary {VOCAB}: one training step (forward '
             f'and backward) of the same weights and batch, through the eager tape and through compiled graphs.</p>',
             f'<p id="run">{escape(report.run.describe())}. {escape(SPREAD_RULE)}</p>',
             f'<p class="warning" id="busy-warning">{escape(warning)}</p>' if warning else "",
             f'<p class="note" id="spread-note">{escape(note)}</p>' if note else "",
             explain("intro"), "<h2>The figures</h2>", explain("table"),
             _table(("", *(NAMES[c] for c in CONTENDERS)), report.figure_rows(), "figures"),
             "<p>rematerialised: the compiled step recomputing cheap forward values in the backward "
             "(remat_policy='mincut') instead of keeping them.</p>",
             _where_time_goes(report, explain), _payoff(report, explain), _static_only(report, drawn, explain),
             _dynamic_only(report, explain), _agreement(report, explain), _graphs(drawn, explain),
             _growth(report, explain), _timeline(report, explain), "</body></html>"]
    return "\n".join(part for part in parts if part)


def _where_time_goes(report: Report, explain) -> str:
    ops = report.time_per_op
    rows = [(m.config["seq_len"], m.eager_ops, m.times[EAGER], f"{ops.eager_per_op_us(m):.0f}", m.optimised_nodes,
             m.times[COMPILED], f"{ops.compiled_per_node_us(m):.0f}", f"{ops.overhead_per_op_us(m):.0f}",
             f"{ops.overhead_share(m):.0%}") for m in ops.sizes]
    header = ("tokens", "tape ops", "tape step", "µs / op", "graph nodes", "compiled step", "µs / node",
              "tape's extra µs / op", "saved")
    return (f'<section id="where-time-goes"><h2>{QUESTIONS["where-time-goes"]}</h2>{explain("where-time-goes")}'
            f'{_table(header, rows)}{_answer("where-time-goes", ops.paragraph())}</section>')


def _payoff(report: Report, explain) -> str:
    payoff = report.payoff
    rows = [("training: compile + first step", payoff.times[COMPILE_STEP], ""),
            ("training: tape step", payoff.times[EAGER], ""), ("training: compiled step", payoff.times[COMPILED], ""),
            ("training: break-even", "", f"{payoff.training_break_even or 'never'} steps"),
            ("generation: compile (decode and prefill)", payoff.times[COMPILE_GENERATION], ""),
            (f"generation: {payoff.new_tokens} tokens eagerly", payoff.times[EAGER_GENERATE],
             f"{milliseconds(payoff.per_token_ms(EAGER_GENERATE))} ms a token"),
            (f"generation: {payoff.new_tokens} tokens compiled", payoff.times[COMPILED_GENERATE],
             f"{milliseconds(payoff.per_token_ms(COMPILED_GENERATE))} ms a token"),
            ("generation: break-even", "", f"{payoff.generation_break_even or 'never'} tokens")]
    return (f'<section id="payoff"><h2>{QUESTIONS["payoff"]}</h2>{explain("payoff")}'
            f'{_table(("", "time [quartiles]", ""), rows)}{_answer("payoff", payoff.paragraph())}</section>')


def _static_only(report: Report, drawn: dict, explain) -> str:
    static = report.static_only
    link = _links(drawn)
    figures = {
        "memory-plan": _table(("measure", "bytes"), [
            ("every intermediate kept (the tape's way, if nothing were freed)", mib(static.keep_all_bytes)),
            ("results the tape kept for backward (measured)", mib(static.tape_result_bytes)),
            (f"planned buffers ({static.planned_buffers}), allocated once", mib(static.planned_bytes)),
            ("live at the peak of the memory timeline", mib(static.live_peak_bytes))]),
        "rewrites": _table(("stage", "nodes after", "changes"), [
            (name, nodes, ", ".join(f"{what} {count}" for what, count in changes.items()) or "-")
            for name, nodes, changes in static.rewrites], text_columns=(2,)) + link(PASSES, COMPILED),
        "kernels": (_table(("step", "time [quartiles]"), [("NumPy kernels", static.times[COMPILED]),
                                                          ("generated Numba kernels", static.times[NUMBA])])
                    if static.kernels is not None else "") + link("numba"),
        "split": (_table(("step", "time [quartiles]"), [("whole batch", static.times[COMPILED]),
                                                        ("2 shards", static.times[SHARDED])])
                  if SHARDED in static.times else "") + link("split"),
        "remat": _table(("plan", "planned bytes", "MFLOP", "note"), [
            (row.label, mib(row.planned_bytes), f"{row.flops / 1e6:.2f}" if row.flops else "-", row.note)
            for row in static.remat], text_columns=(3,)) + link(REMAT),
        "shape-errors": (f"<pre>{escape(static.shape_error)}</pre>" + _table(("", "ops computed", "time [quartiles]"), [
            ("eager tape, until the error", static.tape_ops_before_error, static.times[TAPE_TO_ERROR]),
            ("compile, until the error", static.compile_ops_before_error, static.times[COMPILE_TO_ERROR])])),
    }
    paragraphs = static.paragraphs()
    body = "".join(f'<section id="{key}"><h3>{escape(STATIC_ONLY[key].capitalize())}</h3>{figures[key]}'
                   f'{_answer(key, paragraphs[key])}</section>' for key in STATIC_ONLY)
    return f'<section id="static-only"><h2>{QUESTIONS["static-only"]}</h2>{explain("static-only")}{body}</section>'


def _links(drawn: dict):
    def link(*names: str) -> str:
        found = [drawn[name] for name in names if name in drawn]
        return "".join(f'<p class="graph-link">open: <a href="{escape(item.link)}">{escape(item.caption)}</a>'
                       f'{f" ({item.nodes} nodes)" if item.nodes else ""}</p>' for item in found)
    return link


def _dynamic_only(report: Report, explain) -> str:
    dynamic = report.dynamic_only
    rows = [(f"{run.scale:g}", run.rounds, f"{run.loss:.4g}", f"{run.gradient_norm:.3g}") for run in dynamic.runs]
    return (f'<section id="dynamic-only"><h2>{QUESTIONS["dynamic-only"]}</h2>{explain("dynamic-only")}'
            f'{_table(("input scale", "rounds run (eager)", "loss", "gradient norm"), rows)}'
            f'<p>The line: <code>{escape(dynamic.line)}: {escape(dynamic.source.strip())}</code>. Compiling it:</p>'
            f'<pre id="trace-error">TraceError: {escape(dynamic.trace_error)}</pre>'
            f'{_answer("dynamic-only", dynamic.paragraph())}</section>')


def _agreement(report: Report, explain) -> str:
    agreement = report.agreement
    graph = {check.name: check.relative_error for check in agreement.graph_check.parameters}
    tape = {check.name: check.relative_error for check in agreement.tape_check.parameters}
    rows = [(name, f"{difference:.1e}", f"{graph.get(name, float('nan')):.1e}", f"{tape.get(name, float('nan')):.1e}")
            for name, difference in agreement.gradient_differences.items()]
    header = ("parameter", "compiled vs tape", "graph vs central differences", "tape vs central differences")
    return (f'<section id="agreement"><h2>{QUESTIONS["agreement"]}</h2>{explain("agreement")}'
            f'<p>|loss difference| {agreement.loss_difference:.1e}</p><details><summary>every gradient '
            f'({len(rows)} parameters)</summary>{_table(header, rows, "gradients")}</details>'
            f'{_answer("agreement", agreement.paragraph())}</section>')


def _graphs(drawn: dict, explain) -> str:
    def figure(item: DrawnGraph) -> str:
        return (f'<figure><div class="scroll"><a href="{escape(item.link)}"><img src="{escape(item.overview)}" '
                f'alt="{escape(item.name)}"></a></div><figcaption>{escape(item.caption)} ({item.nodes} nodes; one '
                f'box per module here, every node when opened)</figcaption></figure>')

    side = "".join(figure(drawn[name]) for name in (TAPE, TRACED) if name in drawn)
    listed = "".join(f'<li><a href="{escape(item.link)}">{escape(item.caption)}</a>'
                     f'{f" ({item.nodes} nodes)" if item.nodes else ""}</li>' for item in drawn.values())
    return (f'<section id="graphs"><h2>The graphs, side by side</h2>{explain("graphs")}'
            f'<div class="side">{side}</div><ul>{listed}</ul></section>')


def _growth(report: Report, explain) -> str:
    charts = []
    for label, rows in (("layers", report.by_layers), ("seq_len", report.by_length)):
        named = {NAMES[c]: c for c in CONTENDERS}
        charts.append(line_chart({name: [(m.config[label], m.times[c].median) for m in rows]
                                  for name, c in named.items()}, f"step time against {label}", label,
                                 "ms (median, bars: quartiles)",
                                 spreads={name: [(m.config[label], m.times[c].low, m.times[c].high) for m in rows]
                                          for name, c in named.items()}))
        charts.append(line_chart({name: [(m.config[label], m.footprint(c) / 2**20) for m in rows]
                                  for name, c in named.items()}, f"footprint against {label}", label,
                                 "MiB (planned + traced during a step)"))
    rows = [(size_label(m, label), *(m.times[c] for c in CONTENDERS), *(mib(m.footprint(c)) for c in CONTENDERS))
            for label, series in (("layers", report.by_layers), ("seq_len", report.by_length)) for m in series]
    header = ("size", *(f"{NAMES[c]} step" for c in CONTENDERS), *(f"{NAMES[c]} footprint" for c in CONTENDERS))
    return (f'<section id="growth"><h2>Growth with size</h2>{explain("growth")}<div class="charts">'
            f'{"".join(f"<div class={chr(34)}chart{chr(34)}>{chart}</div>" for chart in charts)}</div>'
            f'{_table(header, rows, "growth-figures")}</section>')


def _timeline(report: Report, explain) -> str:
    b = report.base
    chart = b.timeline.svg(planned_bytes=b.planned_bytes[COMPILED])
    return (f'<section id="timeline"><h2>Memory timeline of the compiled step</h2>{explain("timeline")}'
            f'<div class="chart">{chart}</div><pre id="culprits">{escape(b.timeline.describe())}</pre></section>')
