"""A schedule lowered to one straight-line Python function: a line per step, as torch.fx's GraphModule generates
its `forward`. The interpreter loop (Schedule's with check_numerics) looks up each step's slots, mode and
attributes at every run; here those lookups happen once, when the source is written, and a run is just the
calls. On a decode step of the 2-layer GPT that is ~2 us less per node.

    def run(inputs, params):
        i0, i1, = inputs                     # the graph's inputs (here a decode step's tokens, positions)
        p0, p1, p2, ..., = params
        f45(b45, p0, i0)                     # into its planned buffer b45 (an embedding of the tokens)
        v47 = f47(b46, **a47)                # a view of a buffer, made at each run
        f72(p39, p39, b66, i1)               # an update computed into its parameter (a KV cache write)
        return [b142]

Names: `f<n>` the op's function for the node making value n, `b<n>` the planned buffer (or a view of one, made
once) holding value n, `a<n>` the node's attributes, `p<i>` parameter i, `v<n>` a view made during the run.
`source` is printable; a failure inside a step is traced back to its node by the line it raised on. A view of an
input or a parameter (or of such a view) is kept in `k<n>` with the array it was made of, and made again only
when that array is another one (`if p3 is not k47[0]: ...`): the same view, without the call. (So the arrays of
the latest run stay referenced until the next.)
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Callable, Optional

import numpy as np

from graphgpt.ir import Node
from .steps import INTO_BUFFER, INTO_PARAM, VIEW

_counter = itertools.count()  # a distinct file name per generated function, so tracebacks find their own


class StraightLineCode:
    """The generated `run(inputs, params) -> outputs` of a schedule, its source, and the node of each line."""

    def __init__(self, schedule):
        graph = schedule.graph
        namespace: dict[str, object] = {"copyto": np.copyto}
        names: dict[int, str] = {}  # slot -> the expression naming its array in the function
        inputs = [f"i{index}" for index in range(len(graph.inputs))]
        params = [f"p{index}" for index in range(len(graph.params))]
        names.update(zip(schedule.input_slots, inputs))
        names.update(zip(schedule.param_slots, params))
        for slot, array in schedule.constants:
            names[slot] = f"c{slot}"
            namespace[names[slot]] = array
        for slot, array, _ in schedule.fixed_views:
            names[slot] = f"b{slot}"
            namespace[names[slot]] = array
        lines = ["def run(inputs, params):"]
        if inputs:
            lines.append(f"    {', '.join(inputs)}, = inputs")
        if params:
            lines.append(f"    {', '.join(params)}, = params")
        self.nodes_by_line: dict[int, Node] = {}
        # Names whose array stays the same object from run to run while the inputs' and parameters' arrays do: a
        # combine graph's inputs are the first shard's output buffers, the same arrays at every run.
        stable = set(inputs) | set(params)
        for step in schedule.steps:
            slot = step.output_slot
            function = f"f{slot}"
            namespace[function] = step.function
            arguments = [names[input_slot] for input_slot in step.input_slots]
            if step.attrs:
                namespace[f"a{slot}"] = step.attrs
                arguments.append(f"**a{slot}")
            if step.mode == VIEW and len(step.input_slots) == 1 and names[step.input_slots[0]] in stable:
                # A view of an input or a parameter (or of such a view) stays the same while that array does:
                # made again only when the array is another one (a run of `graphgpt train`'s combine makes 67).
                source = names[step.input_slots[0]]
                names[slot] = f"v{slot}"
                namespace[f"k{slot}"] = [None, None]  # [the source array it was made of, the view]
                stable.add(names[slot])
                lines.append(f"    if {source} is not k{slot}[0]:")
                self.nodes_by_line[len(lines) + 1] = step.node
                lines.append(f"        k{slot}[0], k{slot}[1] = {source}, {function}({', '.join(arguments)})")
                line = f"    v{slot} = k{slot}[1]"
            elif step.mode == VIEW:
                names[slot] = f"v{slot}"
                line = f"    v{slot} = {function}({', '.join(arguments)})"
            elif step.mode == INTO_BUFFER:
                names[slot] = f"b{slot}"
                namespace[names[slot]] = step.out
                line = f"    {function}({', '.join([names[slot], *arguments])})"
            else:
                assert step.mode == INTO_PARAM
                names[slot] = params[step.param_position]
                line = f"    {function}({', '.join([names[slot], *arguments])})"
            self.nodes_by_line[len(lines) + 1] = step.node
            lines.append(line)
        for position, slot in schedule.update_copies:
            lines.append(f"    copyto(p{position}, {names[slot]})")
        lines.append(f"    return [{', '.join(names[slot] for slot in schedule.output_slots)}]")
        self.source = "\n".join(lines) + "\n"
        self.filename = f"<graphgpt schedule {next(_counter)}>"
        exec(compile(self.source, self.filename, "exec"), namespace)
        self.run: Callable = namespace["run"]

    def failing_node(self, traceback: Optional[TracebackType]) -> Optional[Node]:
        """The node whose line of this function raised, from the exception's traceback (None if none did)."""
        while traceback is not None:
            if traceback.tb_frame.f_code.co_filename == self.filename:
                return self.nodes_by_line.get(traceback.tb_lineno)
            traceback = traceback.tb_next
        return None
