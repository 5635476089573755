"""What only the dynamic tape can do: run Python control flow that depends on the data. RefineUntilSmall
(teaching_models.py) loops until its activations are small; run eagerly on a small and a large input it runs a
different number of rounds each time and backward differentiates through the rounds that ran, while compiling it
raises TraceError at the model's `while` line. Both from real runs, the error text as raised.
"""

from __future__ import annotations

import linecache
import re
from dataclasses import dataclass

import numpy as np

from .. import compile as compile_graph
from .. import manual_seed
from ..tensor import Tensor
from ..tracing import TraceError
from .teaching_models import RefineUntilSmall

INPUT_SCALES = (0.1, 3.0)  # a small input settles at once; a large one takes rounds of refinement


@dataclass
class EagerRun:
    scale: float
    rounds: int
    loss: float
    gradient_norm: float


@dataclass
class DynamicOnly:
    runs: list          # EagerRun per input scale
    trace_error: str    # str() of the TraceError compile raised
    line: str           # 'compare/teaching_models.py:44', the line the error names
    source: str         # that line as written

    def paragraph(self) -> str:
        rounds = " and ".join(f"{run.rounds} round{'s' * (run.rounds != 1)} for an input of scale {run.scale:g}"
                              for run in self.runs)
        return (f"RefineUntilSmall loops until its activations are small, deciding in Python from their values. "
                f"Eagerly it ran {rounds}, and loss.backward() differentiated through exactly the rounds that ran "
                f"(gradient norms {', '.join(f'{run.gradient_norm:.3g}' for run in self.runs)}): the tape records "
                f"whatever happened. Compiling it raised TraceError at {self.line} ({self.source.strip()}): a "
                f"static graph is one sequence of ops fixed before any data arrives, and how many rounds to run is "
                f"known only once the data is. A graph can loop a fixed number of times or select with "
                f"mask.where(a, b), computing both sides.")


def _eager_run(model: RefineUntilSmall, scale: float) -> EagerRun:
    x = (np.random.default_rng(0).normal(size=(4, 8)) * scale).astype(np.float32)
    model.zero_grad()
    output = model(Tensor(x))
    loss = (output * output).mean()
    loss.backward()
    # A layer no round ran has no gradient (None): the tape differentiates what ran.
    norm = float(np.sqrt(sum(float((parameter.grad ** 2).sum()) for parameter in model.parameters()
                             if parameter.grad is not None)))
    return EagerRun(scale, model.rounds, float(loss.data), norm)


def measure_dynamic_only() -> DynamicOnly:
    manual_seed(0)
    model = RefineUntilSmall()
    runs = [_eager_run(model, scale) for scale in INPUT_SCALES]
    example = np.zeros((4, 8), np.float32)
    try:
        compile_graph(model, example)
    except TraceError as error:
        text = str(error)
    else:
        raise AssertionError("compiling RefineUntilSmall traced a data-dependent loop: TraceError expected")
    found = re.search(r"(\S+\.py):(\d+)", text)
    path, number = (found.group(1), int(found.group(2))) if found else ("", 0)
    line = f"{'/'.join(path.split('/')[-2:])}:{number}" if found else "an unnamed line"
    return DynamicOnly(runs, text, line, linecache.getline(path, number))
