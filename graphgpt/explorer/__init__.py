"""The interactive graph explorer: one self-contained HTML page per compiled program, to open in a browser.

The graph opens collapsed to its top-level modules (each box with its node count, FLOPs and bytes); a click
expands one level, laid out again only where it changed; the backward pass of each module is a box beside it,
linked node by node to the forward nodes it differentiates and the saved activations it reads; a stepper walks
through the passes on one layout, marking what each removed, created or fused. Nothing is fetched when it is
viewed: the viewer's scripts (and dagre, for layout, with its licence in static/vendor) are inside the page.

    compiled = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy)
    compiled.explore("step.html")            # or: graphgpt view --stage train --out step.html
"""

from __future__ import annotations

from typing import Optional

from graphgpt.passes.numba_backend.engine import imported_sources, module_name

from .model import explorer_model
from .page import ExplorerError, write_page

__all__ = ["explore", "ExplorerError"]


def explore(compiled, path: str = "graph.html", graph: Optional[str] = None, stage: Optional[str] = None,
            title: str = "") -> str:
    """Write the explorer page of `compiled` (a graphgpt.Compiled) to `path`; returns the path written. Every
    graph the program runs is in it, with the record of every pass; the page opens on `graph` (a name from
    compiled.graphs; default the first) after pass `stage` ('traced', or a pass name; default the last: the
    graph that runs).

    >>> compiled.explore("graph.html")      # doctest: +SKIP
    'graph.html'
    """
    entries = list(compiled.program.graphs)
    names = [entry.name for entry in entries]
    if graph is not None and graph not in names:
        raise ExplorerError(f"explore: expected graph= one of {', '.join(map(repr, names))}, got {graph!r}")
    chosen = names.index(graph) if graph is not None else 0
    named_stages = [(entry.name, _measured_stages(compiled, entry.stages)) for entry in entries]
    kernels = [_kernels_of(compiled.program, entry.graph) for entry in entries]
    stage_names = ["traced" if index == 0 else record.name for index, record in enumerate(entries[chosen].stages)]
    if stage is not None and stage not in stage_names:
        raise ExplorerError(f"explore: expected stage= one of {', '.join(map(repr, stage_names))} for graph "
                            f"{names[chosen]!r}, got {stage!r}")
    open_stage = stage_names.index(stage) if stage is not None else None
    model = explorer_model(named_stages, title or _title(compiled), chosen, open_stage, kernels)
    return write_page(model, path)


def _kernels_of(program, graph) -> list[tuple[int, str, list[int]]]:
    """(number, as compiled.kernels() and the text IR number it; source; ids of the values it computes) of each
    generated kernel running nodes of `graph` (backend="numba"; none with the NumPy backend, or for a symbolic
    trace, whose kernels are made per size)."""
    in_graph = {id(node) for node in graph.nodes}
    kernels = []
    for number, (source, nodes) in enumerate(program.generated_kernels().items(), 1):
        computed = [node.output.id for node in nodes if id(node) in in_graph]
        if computed:  # the kernel's module, then the helpers it imports: the reader sees all it runs
            shown = "\n".join([source, *(f"# ---- {module_name(text)}, imported above ----\n{text}"
                                         for text in imported_sources(source))])
            kernels.append((number, shown, computed))
    return kernels


def _measured_stages(compiled, stages):
    """A symbolic trace's records at the sizes of its latest run (its example's before any), as diagrams show."""
    if compiled.specializations is None:
        return stages
    sizes = compiled.specializations.latest_sizes(compiled.shape_env.hints)
    return [record.at(sizes) for record in stages]


def _title(compiled) -> str:
    signature = ", ".join(f"{value.name}: {value.type}" for value in compiled.program.inputs)
    kind = "training step" if compiled.gradient_names else "forward"
    return f"graphgpt {kind} ({signature})"
