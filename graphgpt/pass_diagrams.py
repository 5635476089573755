"""Every pass, before and after: one diagram per pass with what it removed (red, on the graph before) and what
it created or fused (green, on the graph after), and an HTML index listing the passes with their node counts,
FLOPs, planned memory and changes.

    index = render_passes(compiled.stages, "out/passes")    # out/passes/index.html
"""

from __future__ import annotations

import html
import os
from typing import Sequence

from graphgpt.passes.manager import StageRecord, explain_node_count

from .render import render_graph

REMOVED, CREATED = "#cc0000", "#38a13b"


def render_passes(stages: Sequence[StageRecord], folder: str, file_format: str = "svg") -> str:
    """Write the diagrams and index.html into `folder`; returns the index's path."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    first = stages[0]
    first_path = render_graph(first.graph, os.path.join(folder, f"00_input.{file_format}"),
                              title=f"as traced: {first.nodes} nodes")
    rows.append((first, None, first_path))
    for number, (before, after) in enumerate(zip(stages, stages[1:]), start=1):
        stem = os.path.join(folder, f"{number:02d}_{after.name}")
        removed = render_graph(before.graph, f"{stem}_before.{file_format}",
                               title=f"before {after.name}: removed in red",
                               highlight={value_id: REMOVED for value_id in after.removed})
        created = render_graph(after.graph, f"{stem}_after.{file_format}",
                               title=f"after {after.name}: created in green",
                               highlight={value_id: CREATED for value_id in after.created})
        rows.append((after, removed, created))
    index = os.path.join(folder, "index.html")
    with open(index, "w", encoding="utf-8") as page:
        page.write(_index_html(rows, folder))
    return index


def _index_html(rows, folder: str) -> str:
    def link(path):
        return f'<a href="{html.escape(os.path.relpath(path, folder))}">{html.escape(os.path.basename(path))}</a>'

    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>graphgpt passes</title>",
             "<style>body{font-family:sans-serif} td,th{padding:4px 10px;text-align:right} "
             "td:first-child,td:last-child,th:first-child{text-align:left}</style></head><body>",
             "<h1>What each pass did</h1><table border='1' cellspacing='0'>",
             "<tr><th>stage</th><th>nodes</th><th>MFLOP</th><th>planned MiB</th><th>keep-all MiB</th>"
             "<th>changes</th><th>diagrams</th></tr>"]
    for record, before, after in rows:
        changes = ", ".join(f"{what} {count}" for what, count in record.summary.items() if count) or "-"
        diagrams = link(after) if before is None else f"{link(before)} &rarr; {link(after)}"
        lines.append(f"<tr class='stage' data-stage='{html.escape(record.name)}'><td>{html.escape(record.name)}</td>"
                     f"<td>{record.nodes}</td><td>{record.flops / 1e6:.2f}</td>"
                     f"<td>{record.planned_bytes / 2**20:.2f}</td><td>{record.keep_all_bytes / 2**20:.2f}</td>"
                     f"<td>{html.escape(changes)}</td><td>{diagrams}</td></tr>")
    explanation = explain_node_count([record for record, _, _ in rows]).split("\n")
    lines.append(f"</table><p id='node-count'>{'<br>'.join(html.escape(line.strip()) for line in explanation)}</p>")
    lines.append("<p>Removed nodes are outlined in red on the graph before a pass, created and fused "
                 "ones in green on the graph after it. Large graphs are drawn collapsed to modules.</p>")
    lines.append("</body></html>")
    return "\n".join(lines)
