"""The explorer's model of a compiled program: plain JSON-ready data the page draws from.

For every graph the Program runs, one table of values: the union of the graph after every pass (traced -> each
pass), so the page lays it out once and marks in place what each pass removed, created or fused. Each value has
its op, type, role, box in the hierarchy (hierarchy.py), source line, module path, FLOPs, bytes, the forward node
it differentiates, the stages in which it is a saved activation; its text IR line, operands, FLOPs, bytes, op and
type per stage (variants: a pass may keep a node's id and change it: simplify turns a batched matmul into a
reshape of a 2-D one); and in the last stage its planned storage and live range. Each graph also carries the
source of each generated kernel with the values it computes. Strings that repeat (ops, types, paths, source
lines) go through one string table.

    model = explorer_model(compiled)              # {'graphs': [...], 'strings': [...], ...}
"""

from __future__ import annotations

from typing import Optional, Sequence

from graphgpt.ir import Value, get_op
from graphgpt.ir.dims import is_symbolic
from graphgpt.ir.printer import format_attr, format_node
from graphgpt.passes.manager import StageRecord
from graphgpt.passes.saved_activations import saved_values

from .hierarchy import (BACKWARD, COMBINE, LOSS, OPTIMIZER, TOP_LEVEL_BACKWARD, Box, box_paths)

FORMAT_VERSION = 1
# Column order of one value's row (the page reads them by these names: explorer.js VALUE_FIELDS).
VALUE_FIELDS = ("id", "label", "kind", "op", "type", "role", "box", "source", "module", "flops", "bytes",
                "differentiates", "saved", "variants", "plan", "attributes")
KINDS = ("input", "param", "node")
BOX_KINDS = ("module", "backward", "loss", "optimizer", "combine")


class StringTable:
    """Repeated strings stored once: add() gives each distinct string its index."""

    def __init__(self):
        self.strings: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.strings)
            self.strings.append(text)
        return self._index[text]


def _number(count) -> float | str:
    """A measure as a number, or as text when symbolic (a graph measured before any run at concrete sizes)."""
    return str(count) if is_symbolic(count) else int(count)


def _box_kind(box: Box) -> str:
    top = box[0]
    if top.endswith(BACKWARD) or top == TOP_LEVEL_BACKWARD:
        return "backward"
    return {LOSS: "loss", OPTIMIZER: "optimizer", COMBINE: "combine"}.get(top, "module")


class _Boxes:
    """The hierarchy's boxes, each once: [name, parent index or -1, kind, forward twin index or -1]."""

    def __init__(self):
        self.rows: list[list] = []
        self._index: dict[Box, int] = {(): -1}

    def index(self, box: Box) -> int:
        if box not in self._index:
            parent = self.index(box[:-1])
            self._index[box] = len(self.rows)
            self.rows.append([box[-1], parent, BOX_KINDS.index(_box_kind(box)), -1])
        return self._index[box]

    def link_twins(self) -> None:
        """Each top-level backward box points at the forward box it is the backward pass of."""
        for box, position in self._index.items():
            if len(box) == 1 and box[0].endswith(BACKWARD):
                forward = self._index.get((box[0][:-len(BACKWARD)],))
                if forward is not None:
                    self.rows[position][3] = forward


def _leaf_line(value: Value) -> str:
    return f"{value.label}:{value.type}  ({value.kind if value.kind != 'param' else 'parameter'})"


def graph_model(name: str, stages: Sequence[StageRecord], strings: StringTable,
                kernels: Sequence[tuple[int, str, Sequence[int]]] = ()) -> dict:
    """The model of one graph that runs, from the records of every pass that made it, and the generated kernels
    (number, source, ids of the values each computes) its schedule runs."""
    rows: dict[int, list] = {}  # value id -> row (VALUE_FIELDS)
    boxes = _Boxes()
    last_variant: dict[int, list] = {}
    for stage_index, record in enumerate(stages):
        graph = record.graph
        bit = 1 << stage_index
        placed = box_paths(graph)
        saved = saved_values(graph)
        for value in graph.values():
            row = rows.get(value.id)
            if row is None:
                row = rows[value.id] = _new_row(value, boxes.index(placed[value.id]), strings)
            if value.id in saved:
                row[12] |= bit
            node = value.producer if value.kind == "node" else None
            line = format_node(node) if node is not None else _leaf_line(value)
            operands = [value_id.id for value_id in node.inputs] if node is not None else []
            variant = last_variant.get(value.id)
            if variant is not None and variant[2] == line and variant[1] == operands:
                variant[0] |= bit
            else:  # a pass may keep a node's id and change its operands or type (a flattened matmul)
                variant = last_variant[value.id] = [bit, operands, line, _number(_flops(node)),
                                                    _number(value.type.nbytes),
                                                    strings.add(node.op if node else ""), strings.add(str(value.type)),
                                                    strings.add(_attributes(node))]
                row[13].append(variant)
    order = {value_id: position for position, value_id in enumerate(rows)}
    for row in rows.values():
        differentiates = row[11]
        row[11] = order.get(differentiates, -1) if differentiates is not None else -1
        for variant in row[13]:
            variant[1] = [order[value_id] for value_id in variant[1]]
    _add_plan(stages[-1], rows)
    boxes.link_twins()
    return {
        "name": name,
        "values": [rows[value_id] for value_id in rows],
        "boxes": boxes.rows,
        "stages": [_stage_row(index, record, order) for index, record in enumerate(stages)],
        "updates": [[order[parameter.id], order[new.id]] for parameter, new in stages[-1].graph.updates],
        "outputs": [order[value.id] for value in stages[-1].graph.outputs],
        "buffers": list(stages[-1].plan.buffer_bytes),
        "kernels": [[number, source, [order[value_id] for value_id in computed]]
                    for number, source, computed in kernels],
        # ops that make no copy: the page follows a backward node's operands through them to the saved activations
        "view_ops": sorted({node.op for record in stages for node in record.graph.nodes if get_op(node.op).view}),
    }


def _new_row(value: Value, box: int, strings: StringTable) -> list:
    node = value.producer if value.kind == "node" else None
    provenance = node.provenance if node is not None else None
    source = f"{provenance.filename}:{provenance.lineno}" if provenance and provenance.filename else ""
    return [value.id, value.label, KINDS.index(value.kind), strings.add(node.op if node else ""),
            strings.add(str(value.type)), strings.add(provenance.role if provenance else value.kind), box,
            strings.add(source), strings.add(provenance.module_path if provenance else ""), _number(_flops(node)),
            _number(value.type.nbytes), provenance.differentiates if provenance else None, 0, [], 0,
            strings.add(_attributes(node))]


def _attributes(node) -> str:
    if node is None or node.op == "constant":  # a constant's value is in its text IR line
        return ""
    return "  ".join(f"{key}={format_attr(item)}" for key, item in node.attrs.items())


def _flops(node) -> int:
    return get_op(node.op).flops(node.output.type, [value.type for value in node.inputs], node.attrs) if node else 0


def _add_plan(record: StageRecord, rows: dict[int, list]) -> None:
    """The last stage's planned storage of every value: [kind, buffer or -1, made at step, last needed at step, the
    value whose memory it shares (a view's source, the parameter an update is computed into) or -1] (steps are
    node positions in the schedule; inputs and parameters are there from the start)."""
    plan = record.plan
    order = {value_id: position for position, value_id in enumerate(rows)}
    for position, node in enumerate(record.graph.nodes):
        storage = plan.storage[node.output.id]
        rows[node.output.id][14] = [storage.kind, storage.buffer, position,
                                    plan.liveness.end(node.output.id, position), order.get(storage.source, -1)]
    for value in (*record.graph.inputs, *record.graph.params):
        rows[value.id][14] = [value.kind, -1, -1, plan.liveness.end(value.id, -1), -1]


def _stage_row(index: int, record: StageRecord, order: dict[int, int]) -> dict:
    created = [order[value_id] for value_id in sorted(record.created)]
    return {
        "name": "traced" if index == 0 and record.name == "input" else record.name,
        "nodes": record.nodes,
        "flops": _number(record.flops),
        "planned": _number(record.planned_bytes),
        "live": _number(record.peak_bytes),
        "keep_all": _number(record.keep_all_bytes),
        "ms": round(record.seconds * 1e3, 1),
        "changes": ", ".join(f"{what} {count}" for what, count in record.summary.items() if count),
        "created": created,
        "removed": [order[value_id] for value_id in sorted(record.removed)],
        "fused": "fuse" in record.name,
    }


def explorer_model(named_stages: Sequence[tuple[str, Sequence[StageRecord]]], title: str = "",
                   open_graph: int = 0, open_stage: Optional[int] = None,
                   kernels: Optional[Sequence[Sequence[tuple[int, str, Sequence[int]]]]] = None) -> dict:
    """The whole page's model: each graph (name, its stage records, and `kernels[i]`: its generated kernels) and
    the string table; the page opens on graph `open_graph` at stage `open_stage` (default: its last, the graph
    that runs)."""
    strings = StringTable()
    kernels = kernels or [()] * len(named_stages)
    graphs = [graph_model(name, stages, strings, graph_kernels)
              for (name, stages), graph_kernels in zip(named_stages, kernels)]
    return {"version": FORMAT_VERSION, "title": title, "fields": list(VALUE_FIELDS), "kinds": list(KINDS),
            "box_kinds": list(BOX_KINDS), "strings": strings.strings, "graphs": graphs,
            "open": {"graph": open_graph, "stage": open_stage}}

