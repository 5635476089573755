"""The steps of a schedule: how each node of a planned graph produces its value (a view, a call writing into its
planned buffer, or an update computed into its parameter), shared by the interpreter loop (passes/schedule.py)
and the straight-line code generated from it (passes/python_code.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from graphgpt.ir import Node

# How a step produces its value.
VIEW, INTO_BUFFER, INTO_PARAM = "view", "into_buffer", "into_param"


@dataclass(frozen=True)
class Step:
    mode: str
    function: Callable[..., Any]  # compute (VIEW) or compute_into(out, *arrays, **attrs) (the others)
    input_slots: tuple[int, ...]
    attrs: dict
    output_slot: int
    out: Optional[np.ndarray]  # the planned buffer (INTO_BUFFER)
    param_position: int  # which parameter array to write (INTO_PARAM)
    node: Node


def writer(op) -> Callable[..., None]:
    """The op's `compute_into(out, *arrays, **attrs)`, or its compute copied into out where it declares none."""
    if op.compute_into is not None:
        return op.compute_into
    return lambda out, *arrays, **attrs: np.copyto(out, op.compute(*arrays, **attrs))
