"""Module state a forward advances (Dropout's random key, a KV cache): read and written the same way eagerly and in
a compiled graph.

Eagerly the new value is written into the state's array at once. While tracing, it becomes a graph update (the
state is a buffer the graph reads live at every run, and each run writes the new value back into it, as an
optimizer step writes its weights), and later reads in the same trace see the new value.
"""

from __future__ import annotations

from ..tensor import Tensor
from ..tracing import current_trace


def current(state: Tensor) -> Tensor:
    """A state tensor as the code running now sees it: its value, or inside a trace its latest traced update."""
    trace = current_trace()
    latest = None if trace is None else trace.latest_value(state)
    return state if latest is None else Tensor._symbolic(latest, trace)


def advance(state: Tensor, new: Tensor) -> None:
    """Give a state tensor its next value: now (eagerly, in place) or after every run of the graph being traced."""
    trace = current_trace()
    if trace is None:
        state.data[...] = new.data
    else:
        trace.record_update(state, new)
