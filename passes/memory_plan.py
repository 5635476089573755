"""Memory planning: decide where every value of a graph lives, so the executor can run over a fixed set of
buffers allocated once and reused every run (on this machine a fresh array that stays alive costs ~50x more than
writing into one already touched: first-touch page faults).

- Views: transpose, slice, broadcast_to, and reshape wherever NumPy can reshape without copying, make no copy;
  they alias their source, and the source stays alive as long as any view of it is read. Which reshapes copy
  is decided by NumPy itself, on zero-memory stand-ins with the values' real strides, so the executor lays out
  every value exactly as eager execution does (a reduction's rounding depends on the layout it reads).
- Liveness: a value (with its views) is live from the node that makes it to the last node that reads it;
  outputs and update values live to the end.
- Buffer reuse: each value that needs storage takes the smallest free buffer that fits (within 4x), else a new
  one; a buffer is free again after its value's last use.
- In place: a single-ufunc op may write into the buffer of an input of the same type that dies at that node (a
  state update such as a KV cache write, into its first input's); an update (new weights, optimizer state, a KV
  cache) is computed straight into its parameter when nothing reads the old value later, so no copy is needed
  after the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from graphgpt.ir import Graph, get_op
from graphgpt.ir.ops import ViewLayout

from graphgpt.ir.liveness import LiveTimeline, Liveness, analyze_liveness, live_timeline

# A free buffer more than this many times larger than a value is not handed to it (it would strand memory).
MAX_BUFFER_OVERSIZE = 4


@dataclass(frozen=True)
class Storage:
    """Where a value lives: 'input', 'param', 'constant', 'view' (of `source`), 'buffer' (number `buffer`), or
    'into_param' (computed straight into parameter value `source`)."""

    kind: str
    buffer: int = -1
    source: int = -1


@dataclass
class MemoryPlan:
    liveness: Liveness
    storage: dict[int, Storage] = field(default_factory=dict)
    buffer_bytes: list[int] = field(default_factory=list)
    in_place_nodes: int = 0      # nodes writing into the buffer of a dying input
    updates_in_place: int = 0    # updates computed straight into their parameter
    # Kernel scratch (ir/scratch.py): the largest any node declares, as a schedule runs one kernel at a time.
    scratch_bytes: int = 0

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffer_bytes) + self.scratch_bytes

    def timeline(self, graph: Graph) -> LiveTimeline:
        """Bytes of values held in planned buffers alive after each step of `graph` (the graph planned)."""
        return live_timeline(graph, self.liveness, lambda node: self.storage[node.output.id].kind == "buffer")


def _stand_in(value_type) -> np.ndarray:
    """A C-contiguous array of the value's shape and dtype that owns no memory of its size (never read)."""
    dtype = value_type.numpy_dtype
    strides = [dtype.itemsize] * value_type.rank
    for axis in range(value_type.rank - 2, -1, -1):
        strides[axis] = strides[axis + 1] * value_type.shape[axis + 1]
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), value_type.shape, strides, writeable=False)


def _view_layout(node, layouts: dict[int, np.ndarray]) -> Optional[np.ndarray]:
    """The stand-in of the node's result if NumPy makes it as a view of its first input, else None."""
    layout = get_op(node.op).view
    if not layout:
        return None
    source = layouts[node.inputs[0].id]
    if layout is ViewLayout.RESHAPE:
        try:
            return np.reshape(source, node.output.shape, copy=False)
        except ValueError:  # NumPy would copy: the result gets a buffer
            return None
    return get_op(node.op).compute(source, **node.attrs)


def plan_memory(graph: Graph) -> MemoryPlan:
    storage: dict[int, Storage] = {}
    layouts: dict[int, np.ndarray] = {}  # value id -> zero-memory stand-in with the value's strides
    root: dict[int, int] = {}  # value id -> id of the value owning its memory
    for kind, values in (("input", graph.inputs), ("param", graph.params)):
        for value in values:
            storage[value.id], layouts[value.id], root[value.id] = Storage(kind), _stand_in(value.type), value.id

    for node in graph.nodes:
        value_id = node.output.id
        view = _view_layout(node, layouts)
        if node.op == "constant":
            storage[value_id], root[value_id] = Storage("constant"), value_id
        elif view is not None:
            source = root[node.inputs[0].id]
            storage[value_id], root[value_id] = Storage("view", source=source), source
        else:
            storage[value_id], root[value_id] = Storage("buffer"), value_id
        layouts[value_id] = view if view is not None else _stand_in(node.output.type)

    plan = MemoryPlan(analyze_liveness(graph, root), storage)
    _place_updates(graph, plan)
    _assign_buffers(graph, plan)
    plan.scratch_bytes = max((get_op(node.op).scratch_bytes(node.output.type, [value.type for value in node.inputs],
                                                            node.attrs) for node in graph.nodes), default=0)
    return plan


def _place_updates(graph: Graph, plan: MemoryPlan) -> None:
    """Compute an update's new value straight into its parameter when the old value is not read afterwards."""
    root, last_use = plan.liveness.owner, plan.liveness.last_use
    position = {node.output.id: index for index, node in enumerate(graph.nodes)}
    results = {value.id for value in graph.outputs}
    for parameter, new in graph.updates:
        index = position.get(new.id)
        if index is None or plan.storage[new.id].kind != "buffer" or new.id in results:
            continue
        node = graph.nodes[index]
        reads_old = any(root[value.id] == parameter.id for value in node.inputs)
        if last_use.get(parameter.id, -1) > index:  # the old value is still read later (or is an output)
            continue
        # Reading the old value at this very node is fine only for a single ufunc reading it in the same layout,
        # or for a state update given it as its first input (it then writes only what changes).
        if reads_old and not any(value.id == parameter.id and value.type == new.type
                                 for value in _inputs_out_may_be(node)):
            continue
        plan.storage[new.id] = Storage("into_param", source=parameter.id)  # a result: live to the end already
        plan.updates_in_place += 1


def _assign_buffers(graph: Graph, plan: MemoryPlan) -> None:
    storage, root, last_use = plan.storage, plan.liveness.owner, plan.liveness.last_use
    free: list[int] = []  # buffer numbers available for reuse
    for index, node in enumerate(graph.nodes):
        value = node.output
        if storage[value.id].kind == "buffer":
            needed = value.type.nbytes
            chosen = _dying_input_buffer(node, index, storage, root, last_use, graph)
            if chosen is not None:
                plan.in_place_nodes += 1
            else:
                fitting = [b for b in free if needed <= plan.buffer_bytes[b] <= MAX_BUFFER_OVERSIZE * max(needed, 1)]
                if fitting:
                    chosen = min(fitting, key=lambda b: plan.buffer_bytes[b])
                    free.remove(chosen)
                else:
                    chosen = len(plan.buffer_bytes)
                    plan.buffer_bytes.append(needed)
            storage[value.id] = Storage("buffer", buffer=chosen)
        # Free the buffers of inputs last read here (unless this node now writes into one of them), and the
        # output's own buffer if nothing ever reads it.
        output_buffer = storage[value.id].buffer if storage[value.id].kind == "buffer" else None
        dying = {root[v.id] for v in node.inputs if last_use.get(root[v.id]) == index}
        buffers = {storage[owner].buffer for owner in dying
                   if storage[owner].kind == "buffer" and storage[owner].buffer != output_buffer}
        if output_buffer is not None and value.id not in last_use:
            buffers.add(output_buffer)
        free.extend(buffer for buffer in buffers if buffer not in free)


def _dying_input_buffer(node, index, storage, root, last_use, graph):
    """The buffer of an input this node may overwrite: same type, not a view, last read here."""
    for value in _inputs_out_may_be(node):
        owner = storage.get(value.id)
        if (owner is not None and owner.kind == "buffer" and root[value.id] == value.id
                and value.type == node.output.type and last_use.get(value.id) == index):
            return owner.buffer
    return None


def _inputs_out_may_be(node) -> tuple:
    """The inputs whose memory the node's output may take: any of a single ufunc's, a state update's first."""
    op = get_op(node.op)
    return tuple(node.inputs) if op.inplace else tuple(node.inputs[:1]) if op.updates_first_input else ()
