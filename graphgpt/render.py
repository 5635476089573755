"""Diagrams of graphs with graphviz: nodes labelled with op, shape and dtype, clustered by module path
(`blocks.0` > `attention` / `mlp`), collapsible to one box per module, inputs, parameters, constants, forward and
backward nodes styled apart, backward nodes linked to the forward node they differentiate, saved activations
marked with their bytes, fused groups listed inside their node.

    path = render_graph(compiled.graph, "gpt.svg")              # SVG by default; .png and .pdf by extension
    render_graph(graph, "overview.svg", collapse=1)             # one box per top-level module

Without the `dot` program the .dot source is written instead, with one line saying how to install graphviz.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
import zlib
from typing import Optional

import graphviz

from graphgpt.ir import Graph, Node

FORMATS = ("svg", "png", "pdf")
# Past this many nodes a full drawing reads as noise (and dot takes long: ~8 s for a 2-layer training graph of
# ~1400 nodes here): collapse to modules instead.
AUTO_COLLAPSE_NODES = 1500
DOT_SECONDS = 120  # a drawing that takes longer is not going to be read
INSTALL_HINT = "install graphviz for diagrams: apt-get install graphviz (Debian/Ubuntu) or brew install graphviz"

STYLES = {
    "input": dict(shape="ellipse", style="filled", fillcolor="#cfe2f3"),
    "param": dict(shape="note", style="filled", fillcolor="#fff2cc"),
    "constant": dict(shape="box", style="dashed", fontcolor="#666666", color="#999999"),
    "forward": dict(shape="box", style="rounded,filled", fillcolor="#ffffff"),
    "backward": dict(shape="box", style="rounded,filled", fillcolor="#f4cccc"),
    "optimizer": dict(shape="box", style="rounded,filled", fillcolor="#d9ead3"),
    "fused": dict(shape="box", style="rounded,filled,bold", fillcolor="#d9d2e9"),
    "module": dict(shape="box3d", style="filled", fillcolor="#eeeeee"),
}


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def _kind(node: Node) -> str:
    if node.op == "constant":
        return "constant"
    if node.op == "fused_elementwise":
        return "fused"
    if node.provenance.module_path.startswith("optimizer."):
        return "optimizer"
    return "backward" if node.provenance.differentiates is not None else "forward"


def _label(*lines: str) -> str:
    """A multi-line label; html.escape keeps any op name or shape from being read as graphviz markup."""
    return "<" + "<br/>".join(html.escape(line) for line in lines) + ">"


def _module_of(node: Node, depth: Optional[int]) -> str:
    path = node.provenance.module_path
    if node.provenance.module_path.startswith("optimizer."):
        path = "optimizer"
    parts = [part for part in path.split(".") if part]
    return ".".join(parts if depth is None else parts[:depth])


def saved_activations(graph: Graph) -> set[int]:
    """Forward values that backward nodes read: what training must keep alive from forward to backward."""
    forward = {node.output.id for node in graph.nodes if _kind(node) == "forward"}
    return {value.id for node in graph.nodes if _kind(node) == "backward" for value in node.inputs
            if value.id in forward}


def to_dot(graph: Graph, collapse: Optional[int] = None, highlight: Optional[dict[int, str]] = None,
           title: str = "") -> graphviz.Digraph:
    """The graphviz description of `graph`. `collapse=k` draws one box per module path cut to k parts (and
    forward/backward apart); `highlight` colours node ids ('created', 'removed'...) for before/after views."""
    dot = graphviz.Digraph(graph_attr=dict(rankdir="TB", fontname="Helvetica", label=html.escape(title),
                                           labelloc="t", compound="true"),
                           node_attr=dict(fontname="Helvetica", fontsize="10"), edge_attr=dict(color="#555555"))
    if collapse is not None:
        return _collapsed(dot, graph, collapse)
    highlight = highlight or {}
    saved = saved_activations(graph)
    clusters: dict[str, list[str]] = {}
    for value in graph.inputs:
        dot.node(f"v{value.id}", _label(value.label, str(value.type)), **STYLES["input"])
    for value in graph.params:
        clusters.setdefault(_module_of_name(value.name), []).append(f"v{value.id}")
        dot.node(f"v{value.id}", _label(value.label, str(value.type)), **STYLES["param"])
    for node in graph.nodes:
        kind = _kind(node)
        lines = [f"{node.output.label} {node.op}", str(node.output.type)]
        if kind == "fused":
            lines += [f"  {op}" for op, _ in node.attrs["program"]]
        if node.output.id in saved:
            lines.append(f"saved {_bytes(node.output.type.nbytes)}")
        attributes = dict(STYLES[kind])
        if node.output.id in saved:
            attributes["penwidth"] = "2.5"
        if node.output.id in highlight:
            attributes.update(color=highlight[node.output.id], penwidth="3")
        tooltip = node.provenance.describe() + (f" (grad of %{node.provenance.differentiates})"
                                                if node.provenance.differentiates is not None else "")
        dot.node(f"v{node.output.id}", _label(*lines), tooltip=html.escape(tooltip), **attributes)
        clusters.setdefault(_module_of(node, None), []).append(f"v{node.output.id}")
        for value in node.inputs:
            dot.edge(f"v{value.id}", f"v{node.output.id}")
    defined = {value.id for value in graph.values()}
    for node in graph.nodes:  # the forward node each backward node differentiates
        target = node.provenance.differentiates
        if target is not None and target in defined and target != node.output.id:
            dot.edge(f"v{target}", f"v{node.output.id}", style="dashed", color="#cc0000", constraint="false",
                     arrowhead="none", tooltip="differentiates")
    for parameter, value in graph.updates:
        dot.edge(f"v{value.id}", f"v{parameter.id}", style="bold", color="#38761d", constraint="false",
                 label="update")
    _nest_clusters(dot, clusters)
    return dot


def _module_of_name(name: str) -> str:
    """The module owning a parameter: 'blocks.0.ln1.gamma' -> 'blocks.0.ln1'."""
    return name.rpartition(".")[0] if not name.startswith("optimizer.") else "optimizer"


def _nest_clusters(dot: graphviz.Digraph, members: dict[str, list[str]]) -> None:
    """Nested clusters by module path: blocks > blocks.0 > blocks.0.attention > ...; '' stays at the top."""
    paths = sorted({prefix for path in members if path for prefix in _prefixes(path)})

    def build(parent_graph, prefix: str) -> None:
        for node_name in members.get(prefix, []):
            parent_graph.node(node_name)
        for child in (p for p in paths if p.rpartition(".")[0] == prefix and p != prefix):
            with parent_graph.subgraph(name=f"cluster_{child}") as cluster:
                cluster.attr(label=child.rpartition(".")[2] if "." in child else child, style="rounded",
                             color="#7f7f7f", fontsize="11", tooltip=child)
                build(cluster, child)

    for node_name in members.get("", []):
        dot.node(node_name)
    for top in (p for p in paths if "." not in p):
        with dot.subgraph(name=f"cluster_{top}") as cluster:
            cluster.attr(label=top, style="rounded", color="#7f7f7f", fontsize="12", tooltip=top)
            build(cluster, top)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _collapsed(dot: graphviz.Digraph, graph: Graph, depth: int) -> graphviz.Digraph:
    """One box per (module cut to `depth` parts, forward or backward), with the nodes and bytes it holds."""
    group_of: dict[int, str] = {}
    counts: dict[str, list[int]] = {}
    for value in graph.inputs:
        group_of[value.id] = f"input {value.name}"
        counts.setdefault(group_of[value.id], [0, value.type.nbytes])
    for node in graph.nodes:
        module = _module_of(node, depth) or "(top level)"
        backward = node.provenance.differentiates is not None and module != "optimizer"
        group = f"{module} [backward]" if backward else module
        group_of[node.output.id] = group
        entry = counts.setdefault(group, [0, 0])
        entry[0] += 1
        entry[1] += node.output.type.nbytes
    for group, (nodes, size) in counts.items():
        style = STYLES["input"] if group.startswith("input ") else STYLES["backward"] if "[backward]" in group \
            else STYLES["optimizer"] if group == "optimizer" else STYLES["module"]
        dot.node(_safe_id(group), _label(group, f"{nodes} nodes, {_bytes(size)}"), **style)
    edges = set()
    for node in graph.nodes:
        for value in node.inputs:
            source, target = group_of.get(value.id), group_of[node.output.id]
            if source is not None and source != target:
                edges.add((source, target))
    for source, target in sorted(edges):
        dot.edge(_safe_id(source), _safe_id(target))
    return dot


def _safe_id(text: str) -> str:
    """A dot identifier for a group name; crc32 rather than hash() (salted per process) keeps output stable."""
    return "g_" + "".join(c if c.isalnum() else "_" for c in text) + f"_{zlib.crc32(text.encode()):08x}"


def render_graph(graph: Graph, path: str, collapse: Optional[int] = None, title: str = "",
                 highlight: Optional[dict[int, str]] = None) -> str:
    """Draw `graph` to `path` (.svg, .png or .pdf); returns the path written. Graphs above AUTO_COLLAPSE_NODES
    are drawn collapsed to modules. Without `dot`, writes `path` + '.dot' and says how to install graphviz."""
    root, extension = os.path.splitext(path)
    file_format = extension.lstrip(".").lower() or "svg"
    if file_format not in FORMATS:
        raise ValueError(f"cannot draw to {path!r}: use one of {', '.join('.' + f for f in FORMATS)}")
    if collapse is None and len(graph.nodes) > AUTO_COLLAPSE_NODES:
        collapse = 2
        title = (title + " " if title else "") + f"(collapsed: {len(graph.nodes)} nodes)"
    dot = to_dot(graph, collapse=collapse, highlight=highlight, title=title)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if shutil.which("dot") is None:
        return _write_source(dot, root, f"the `dot` program is missing; {INSTALL_HINT}")
    output = root + "." + file_format
    failure = _run_dot(dot.source, file_format, output)
    if failure is None:
        return output
    if collapse is None:  # dot crashed or ran too long on the full drawing: the module overview still helps
        overview = to_dot(graph, collapse=2, title=f"{title} (collapsed: dot failed on the full graph)")
        if _run_dot(overview.source, file_format, output) is None:
            print(f"graphgpt: drew {output} collapsed to modules ({failure})", file=sys.stderr)
            return output
    return _write_source(dot, root, f"dot could not draw it: {failure}")


def _run_dot(source: str, file_format: str, output: str) -> Optional[str]:
    """Run dot with a time limit; None on success, else what went wrong (dot has crashed on large clustered
    graphs here: graphviz 2.43's merge_chain assertion)."""
    try:
        subprocess.run(["dot", f"-T{file_format}", "-o", output], input=source.encode("utf-8"),
                       capture_output=True, check=True, timeout=DOT_SECONDS)
        return None
    except subprocess.TimeoutExpired:
        return f"dot took more than {DOT_SECONDS} s"
    except subprocess.CalledProcessError as error:
        detail = error.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"dot exited with {error.returncode}: {detail[-1] if detail else 'no message'}"


def _write_source(dot: graphviz.Digraph, root: str, reason: str) -> str:
    source = root + ".dot"
    with open(source, "w", encoding="utf-8") as file:
        file.write(dot.source)
    print(f"graphgpt: wrote {source} ({reason})", file=sys.stderr)
    return source
