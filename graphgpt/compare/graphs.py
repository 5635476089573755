"""The graphs the report mentions, drawn into a folder beside the page and linked from it: the eager tape of one
step and the step as traced (side by side), the compiled step, its passes one by one, the rematerialised step,
the split step's shard and combine graphs, and the step with generated kernels. Each is drawn as an SVG; the tape
and the traced step are also drawn collapsed to one box per module (forward and backward apart), which the page
shows side by side, since two full drawings of hundreds of nodes cannot be read at half a page's width. Where the
interactive explorer is built (`compiled.explore(path)`), every compiled graph, the traced step and the passes are
linked to explorer pages instead of their SVGs; the tape, which is no compiled program, to its SVG.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from graphgpt.ir import Graph

from ..render import render_graph
from .measurement import COMPILED, REMAT

TAPE, TRACED, SPLIT, NUMBA, PASSES = "tape", "traced", "split", "numba", "passes"
SIDE_BY_SIDE = (TAPE, TRACED)
MODULE_DEPTH = 2  # the overviews' boxes: 'blocks.0', 'lm_head', ...
CAPTIONS = {TAPE: "the eager tape of one step: the operations it recorded, which backward walks in reverse",
            TRACED: "the training step as traced: forward and generated backward, before any pass",
            COMPILED: "the compiled training step, after the default passes: what runs",
            PASSES: "each pass, before and after, with what it removed and created",
            REMAT: "the rematerialised step: forward ops recomputed in the backward are dashed in amber",
            SPLIT: "the split step: the shard graph each thread runs, and the combine graph",
            NUMBA: "the step with generated kernels: fused elementwise chains listed inside their node"}


@dataclass
class DrawnGraph:
    name: str
    caption: str
    picture: str          # the SVG (or .dot without graphviz), relative to the page
    link: str             # what a click opens: the explorer page if there is one, else the picture
    nodes: Optional[int]  # None for the passes
    overview: str = ""    # drawn collapsed to modules (SIDE_BY_SIDE only), relative to the page


def draw_graphs(graphs: dict, page_path: str) -> dict[str, DrawnGraph]:
    """Draw every graph of `graphs` (name -> ir.Graph or Compiled; TRACED is the first stage of COMPILED's graph)
    into `<page stem>_graphs/` and return how the page links each, by name, with the passes of the compiled
    step: in the explorer, stepping from the traced graph, or without it as a diagram per pass."""
    page_folder = os.path.dirname(os.path.abspath(page_path))
    folder = os.path.splitext(os.path.abspath(page_path))[0] + "_graphs"
    os.makedirs(folder, exist_ok=True)

    def relative(path: str) -> str:
        return os.path.relpath(path, page_folder)

    drawn = {}
    for name, graph in graphs.items():
        stem = os.path.join(folder, name)
        if isinstance(graph, Graph):
            nodes = len(graph.nodes)
            picture = render_graph(graph, stem + ".svg", title=f"{name}: {nodes} nodes")
            explorer = _explorer_page(graphs[COMPILED], stem, "traced") if name == TRACED else None
        else:
            picture = graph.render(stem + ".svg")
            nodes = sum(len(each.nodes) for each in graph.graphs.values())
            explorer = _explorer_page(graph, stem)
        overview = "" if name not in SIDE_BY_SIDE else relative(render_graph(
            graph if isinstance(graph, Graph) else graph.graph, stem + "_modules.svg", collapse=MODULE_DEPTH,
            title=f"{name}: {nodes} nodes, one box per module"))
        drawn[name] = DrawnGraph(name, CAPTIONS[name], relative(picture), relative(explorer or picture), nodes,
                                 overview)
    if TRACED in drawn and drawn[TRACED].link.endswith(".html"):
        drawn[PASSES] = DrawnGraph(PASSES, "each pass, one step at a time from the graph as traced, marking what "
                                   "it removed, created and fused (the explorer's pass stepper)",
                                   drawn[TRACED].link, drawn[TRACED].link, None)
    elif COMPILED in graphs:
        index = relative(graphs[COMPILED].render_passes(os.path.join(folder, PASSES)))
        drawn[PASSES] = DrawnGraph(PASSES, CAPTIONS[PASSES], index, index, None)
    return drawn


def _explorer_page(compiled, stem: str, stage: Optional[str] = None) -> Optional[str]:
    """The explorer's page of `compiled` (opened at `stage`), where the explorer is built (compiled.explore);
    else None."""
    if not hasattr(compiled, "explore"):
        return None
    return compiled.explore(stem + ".html", stage=stage)
