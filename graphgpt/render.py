"""Diagrams of graphs with graphviz: nodes labelled with op, shape and dtype, clustered by module path
(`blocks.0` > `attention` / `mlp`), collapsible to one box per module, inputs, parameters, constants, forward and
backward nodes styled apart, backward nodes linked to the forward node they differentiate, forward ops the
backward pass recomputes (rematerialisation) dashed in amber, saved activations marked with their bytes, fused
groups listed inside their node.

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
from typing import Callable, Optional, Sequence

import graphviz

from graphgpt.ir import Graph, Node, Value
from graphgpt.ir.dims import is_symbolic
from graphgpt.passes.saved_activations import saved_values

FORMATS = ("svg", "png", "pdf")
# Past this many nodes a full drawing reads as noise (and dot takes long: ~8 s for a 2-layer training graph of
# ~1400 nodes here): collapse to modules instead.
AUTO_COLLAPSE_NODES = 1500
# More graph inputs than this are drawn as one column (one box when collapsed) rather than side by side.
MAX_INPUTS_SIDE_BY_SIDE = 6
DOT_SECONDS = 120  # a drawing that takes longer is not going to be read
INSTALL_HINT = "install graphviz for diagrams: apt-get install graphviz (Debian/Ubuntu) or brew install graphviz"

STYLES = {
    "input": dict(shape="ellipse", style="filled", fillcolor="#cfe2f3"),
    "param": dict(shape="note", style="filled", fillcolor="#fff2cc"),
    "constant": dict(shape="box", style="dashed", fontcolor="#666666", color="#999999"),
    "forward": dict(shape="box", style="rounded,filled", fillcolor="#ffffff"),
    "backward": dict(shape="box", style="rounded,filled", fillcolor="#f4cccc"),
    "optimizer": dict(shape="box", style="rounded,filled", fillcolor="#d9ead3"),
    "combine": dict(shape="box", style="rounded,filled", fillcolor="#fce5cd"),
    # A forward op the backward pass repeats (rematerialisation): the forward's colour, a dashed amber border.
    "recompute": dict(shape="box", style="rounded,filled,dashed", fillcolor="#fff2cc", color="#e69138",
                      penwidth="2"),
    "fused": dict(shape="box", style="rounded,filled,bold", fillcolor="#d9d2e9"),
    "module": dict(shape="box3d", style="filled", fillcolor="#eeeeee"),
}


def _bytes(count) -> str:
    if is_symbolic(count):  # 8*T bytes: the size of a symbolic trace's value (ir/dims.py)
        return f"{count} B"
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
    return node.provenance.role  # forward, backward, optimizer or combine


def _label(*lines: str) -> str:
    """A multi-line label; html.escape keeps any op name or shape from being read as graphviz markup."""
    return "<" + "<br/>".join(html.escape(line) for line in lines) + ">"


def _module_of(node: Node, depth: Optional[int]) -> str:
    role = node.provenance.role
    # In parentheses, which no module path has: a user's module named `optimizer` stays apart.
    path = f"({role})" if role in ("optimizer", "combine") else node.provenance.module_path
    parts = [part for part in path.split(".") if part]
    return ".".join(parts if depth is None else parts[:depth])


def saved_activations(graph: Graph) -> set[int]:
    """Forward values that backward nodes (or recomputed ones) read: what training keeps alive from forward to
    backward."""
    return saved_values(graph)


def to_dot(graph: Graph, collapse: Optional[int] = None, highlight: Optional[dict[int, str]] = None,
           title: str = "", id_prefix: str = "") -> graphviz.Digraph:
    """The graphviz description of `graph`. `collapse=k` draws one box per module path cut to k parts (and
    forward/backward apart); `highlight` colours node ids ('created', 'removed'...) for before/after views;
    `id_prefix` starts every dot identifier (node 'v12' is '<id_prefix>v12'), so several graphs can share one
    diagram."""
    dot = graphviz.Digraph(name=f"cluster_{id_prefix}graph" if id_prefix else None,
                           graph_attr=dict(rankdir="TB", fontname="Helvetica", label=html.escape(title),
                                           labelloc="t", compound="true"),
                           node_attr=dict(fontname="Helvetica", fontsize="10"), edge_attr=dict(color="#555555"))
    if collapse is not None:
        return _collapsed(dot, graph, collapse, id_prefix)
    highlight = highlight or {}
    saved = saved_activations(graph)
    readers = graph.users()
    clusters: dict[str, list[str]] = {}
    for value in graph.inputs:
        dot.node(f"{id_prefix}v{value.id}", _label(value.label, str(value.type)), **STYLES["input"])
    if len(graph.inputs) > MAX_INPUTS_SIDE_BY_SIDE:  # a combine graph's many inputs: one column, not a wide row
        with dot.subgraph(name=f"cluster_{id_prefix}inputs") as column:
            column.attr(label=f"{len(graph.inputs)} inputs", style="dashed", color="#7f7f7f")
            for first, second in zip(graph.inputs, graph.inputs[1:]):
                column.edge(f"{id_prefix}v{first.id}", f"{id_prefix}v{second.id}", style="invis")
    for value in graph.params:
        group = _module_of_param(value, readers.get(value.id, []))
        clusters.setdefault(group, []).append(f"{id_prefix}v{value.id}")
        dot.node(f"{id_prefix}v{value.id}", _label(value.label, str(value.type)), **STYLES["param"])
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
        if kind == "recompute":
            lines.append("recomputed")
            tooltip += " (a forward op recomputed in the backward pass)"
        dot.node(f"{id_prefix}v{node.output.id}", _label(*lines), tooltip=html.escape(tooltip), **attributes)
        clusters.setdefault(_module_of(node, None), []).append(f"{id_prefix}v{node.output.id}")
        for value in node.inputs:
            dot.edge(f"{id_prefix}v{value.id}", f"{id_prefix}v{node.output.id}")
    defined = {value.id for value in graph.values()}
    for node in graph.nodes:  # the forward node each backward node differentiates
        target = node.provenance.differentiates
        if target is not None and target in defined and target != node.output.id:
            dot.edge(f"{id_prefix}v{target}", f"{id_prefix}v{node.output.id}", style="dashed", color="#cc0000",
                     constraint="false", arrowhead="none", tooltip="differentiates")
    for parameter, value in graph.updates:
        dot.edge(f"{id_prefix}v{value.id}", f"{id_prefix}v{parameter.id}", style="bold", color="#38761d",
                 constraint="false", label="update")
    _nest_clusters(dot, clusters, id_prefix)
    return dot


def _module_of_param(value: Value, readers: Sequence[Node]) -> str:
    """The module owning a parameter: 'blocks.0.ln1.gamma' -> 'blocks.0.ln1'; state only the optimizer's update
    reads (its moments, its step count) goes with the optimizer."""
    if readers and all(node.provenance.role == "optimizer" for node in readers):
        return "(optimizer)"
    return value.name.rpartition(".")[0]


def _nest_clusters(dot: graphviz.Digraph, members: dict[str, list[str]], id_prefix: str) -> None:
    """Nested clusters by module path: blocks > blocks.0 > blocks.0.attention > ...; '' stays at the top."""
    paths = sorted({prefix for path in members if path for prefix in _prefixes(path)})

    def build(parent_graph, prefix: str) -> None:
        for node_name in members.get(prefix, []):
            parent_graph.node(node_name)
        for child in (p for p in paths if p.rpartition(".")[0] == prefix and p != prefix):
            with parent_graph.subgraph(name=f"cluster_{id_prefix}{child}") as cluster:
                cluster.attr(label=child.rpartition(".")[2] if "." in child else child, style="rounded",
                             color="#7f7f7f", fontsize="11", tooltip=child)
                build(cluster, child)

    for node_name in members.get("", []):
        dot.node(node_name)
    for top in (p for p in paths if "." not in p):
        with dot.subgraph(name=f"cluster_{id_prefix}{top}") as cluster:
            cluster.attr(label=top, style="rounded", color="#7f7f7f", fontsize="12", tooltip=top)
            build(cluster, top)


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _collapsed(dot: graphviz.Digraph, graph: Graph, depth: int, id_prefix: str) -> graphviz.Digraph:
    """One box per (module cut to `depth` parts, forward or backward), with the nodes and bytes it holds."""
    group_of: dict[int, str] = {}
    counts: dict[str, list[int]] = {}
    together = len(graph.inputs) > MAX_INPUTS_SIDE_BY_SIDE
    for value in graph.inputs:
        group_of[value.id] = f"input {len(graph.inputs)} values" if together else f"input {value.name}"
        counts.setdefault(group_of[value.id], [0, 0])[1] += value.type.nbytes
    for node in graph.nodes:
        module = _module_of(node, depth) or "(top level)"
        role = node.provenance.role
        backward = role == "backward"
        group = f"{module} [backward]" if backward else f"{module} [recompute]" if role == "recompute" else module
        group_of[node.output.id] = group
        entry = counts.setdefault(group, [0, 0])
        entry[0] += 1
        entry[1] += node.output.type.nbytes
    for group, (nodes, size) in counts.items():
        style = STYLES["input"] if group.startswith("input ") else STYLES["backward"] if "[backward]" in group \
            else STYLES["recompute"] if "[recompute]" in group \
            else STYLES[group[1:-1]] if group in ("(optimizer)", "(combine)") else STYLES["module"]
        dot.node(_safe_id(id_prefix + group), _label(group, f"{nodes} nodes, {_bytes(size)}"), **style)
    edges = set()
    for node in graph.nodes:
        for value in node.inputs:
            source, target = group_of.get(value.id), group_of[node.output.id]
            if source is not None and source != target:
                edges.add((source, target))
    for source, target in sorted(edges):
        dot.edge(_safe_id(id_prefix + source), _safe_id(id_prefix + target))
    return dot


def _safe_id(text: str) -> str:
    """A dot identifier for a group name; crc32 rather than hash() (salted per process) keeps output stable."""
    return "g_" + "".join(c if c.isalnum() else "_" for c in text) + f"_{zlib.crc32(text.encode()):08x}"


# What each role of node is, in a diagram's title ("training step: forward + backward, 256 nodes").
ROLE_WORDS = {"forward": "forward", "recompute": "recomputed forward", "backward": "backward",
              "combine": "sum of the shards", "optimizer": "optimizer update"}


def diagram_title(name: str, graph: Graph) -> str:
    """A title a reader understands: the graph's name, the parts of a program it holds and its size, e.g.
    'training step: forward + backward, 256 nodes' (not the name of the pass that last rewrote it)."""
    roles = {node.provenance.role for node in graph.nodes}
    parts = " + ".join(words for role, words in ROLE_WORDS.items() if role in roles)
    contents = f"{parts}, " if parts and parts != name else ""
    return f"{name}: {contents}{len(graph.nodes)} nodes"


def render_graph(graph: Graph, path: str, collapse: Optional[int] = None, title: str = "",
                 highlight: Optional[dict[int, str]] = None) -> str:
    """Draw `graph` to `path` (.svg, .png or .pdf); returns the path written. Graphs above AUTO_COLLAPSE_NODES
    are drawn collapsed to modules. Without `dot`, writes `path` + '.dot' and says how to install graphviz."""
    if collapse is None and len(graph.nodes) > AUTO_COLLAPSE_NODES:
        collapse = 2
        title = (title + " " if title else "") + "(collapsed to modules)"
    return _draw(lambda depth, note: to_dot(graph, collapse=depth, highlight=highlight, title=title + note),
                 path, collapse)


def render_graphs(named_graphs: Sequence[tuple[str, Graph]], path: str, collapse: Optional[int] = None) -> str:
    """Draw several graphs (a program's shard and combine graphs) into one diagram at `path`, each in a box
    labelled with its name; one graph is drawn as render_graph draws it. Returns the path written."""
    if len(named_graphs) == 1:
        name, graph = named_graphs[0]
        return render_graph(graph, path, collapse, title=diagram_title(name, graph))

    def describe(depth: Optional[int], note: str) -> graphviz.Digraph:
        dot = graphviz.Digraph(graph_attr=dict(rankdir="TB", fontname="Helvetica", compound="true",
                                               label=html.escape(note.strip()), labelloc="t"),
                               node_attr=dict(fontname="Helvetica", fontsize="10"),
                               edge_attr=dict(color="#555555"))
        for index, (name, graph) in enumerate(named_graphs):
            own = depth if depth is not None or len(graph.nodes) <= AUTO_COLLAPSE_NODES else 2
            shown = " (collapsed to modules)" if own is not None and depth is None else ""
            dot.subgraph(to_dot(graph, collapse=own, title=diagram_title(name, graph) + shown,
                                id_prefix=f"g{index}_"))
        return dot

    return _draw(describe, path, collapse)


def _draw(describe: Callable[[Optional[int], str], graphviz.Digraph], path: str, collapse: Optional[int]) -> str:
    """Run dot on describe(collapse, ''); if dot fails on a full drawing, on describe(2, note) collapsed to
    modules; without dot (or if both fail) write the source."""
    root, extension = os.path.splitext(path)
    file_format = extension.lstrip(".").lower() or "svg"
    if file_format not in FORMATS:
        raise ValueError(f"cannot draw to {path!r}: use one of {', '.join('.' + f for f in FORMATS)}")
    dot = describe(collapse, "")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if shutil.which("dot") is None:
        return _write_source(dot, root, f"the `dot` program is missing; {INSTALL_HINT}")
    output = root + "." + file_format
    failure = _run_dot(dot.source, file_format, output)
    if failure is None:
        return output
    if collapse is None:  # dot crashed or ran too long on the full drawing: the module overview still helps
        overview = describe(2, " (collapsed: dot failed on the full graph)")
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
