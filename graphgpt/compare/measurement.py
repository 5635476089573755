"""One model size, both ways: a GPT and a batch set up for one training step (forward and backward) through the
eager tape and through compiled graphs, what can be counted without a clock (ops, nodes, memory), and the
contenders whose times the comparison takes, all sizes interleaved in one pass (see compare/__init__.py).

Memory is measured in three named ways, never added together behind the reader's back:
- planned buffers: what a compiled step's schedule allocated once, at compile time, and reuses every step (its
  memory timeline shows the live bytes within them, and draws this total as a line);
- traced during a step: the peak of bytes allocated while one step runs (tracemalloc; NumPy reports its arrays to
  it), which for the tape is every intermediate it keeps for backward plus the gradients, and for a compiled step
  only the temporaries its kernels make outside the plan;
- footprint: planned buffers + traced during a step, the memory one step needs, comparable across both.
"""

from __future__ import annotations

import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .. import compile as compile_graph
from .. import manual_seed
from ..memory_timeline import MemoryTimeline
from ..nn import GPT
from ..nn import functional as F
from ..tensor import Tensor, counting_eager_ops
from ..timing import Spread

VOCAB = 65
EAGER, COMPILED, REMAT = "eager", "compiled", "rematerialised"  # the contenders every size is timed with


def mib(count: Optional[int]) -> str:
    """Bytes in MiB with two decimals, as the memory timeline gives them; '-' for a measure that does not apply."""
    return "-" if count is None else f"{count / 2**20:.2f} MiB"


def describe_config(config: dict) -> str:
    """'GPT, 64 wide, 2 layers, 4 heads, sequences of 32, batch 4': a model size as a reader says it."""
    return (f"GPT, {config['embed']} wide, {config['layers']} layer{'s' * (config['layers'] != 1)}, "
            f"{config['heads']} heads, sequences of {config['seq_len']}, batch {config['batch']}")


@dataclass
class Measurement:
    """One model size, both ways, from one run. Times are filled in after the interleaved timing pass."""

    config: dict
    eager_ops: int = 0              # ops run eagerly in one step: forward and backward
    tape_nodes: int = 0             # operations the tape recorded (the forward, which backward walks)
    tape_result_bytes: int = 0      # bytes of the results the tape keeps for backward, one fresh array each
    graph_nodes: int = 0            # forward + generated backward, as traced
    optimised_nodes: int = 0
    remat_nodes: int = 0            # the rematerialised step's graph
    planned_buffers: int = 0        # how many buffers the compiled step's schedule reuses
    planned_bytes: dict = field(default_factory=dict)   # compiled, rematerialised: allocated once, reused
    traced_bytes: dict = field(default_factory=dict)    # eager, compiled, rematerialised: peak during one step
    times: dict = field(default_factory=dict)           # contender -> Spread (ms)
    loss_difference: float = 0.0
    worst_gradient: tuple = ("", 0.0)
    tape_ops: Counter = field(default_factory=Counter)
    graph_forward_ops: Counter = field(default_factory=Counter)
    timeline: Optional[MemoryTimeline] = None  # of the compiled step

    def footprint(self, contender: str) -> int:
        """Planned buffers + traced during a step: the memory one step of `contender` needs."""
        return self.planned_bytes.get(contender, 0) + self.traced_bytes[contender]

    def median_ms(self, contender: str) -> float:
        return self.times[contender].median

    @property
    def eager_ms(self) -> float:
        return self.median_ms(EAGER)

    @property
    def compiled_ms(self) -> float:
        return self.median_ms(COMPILED)

    @property
    def remat_ms(self) -> float:
        return self.median_ms(REMAT)


def traced_peak_bytes(run: Callable[[], object]) -> int:
    """The peak of bytes allocated while `run` runs, counted from zero at its start (tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


class Subject:
    """A GPT and batch of one size with its eager step and compiled steps, measured on construction (everything
    but time); `contenders` are the steps to time."""

    def __init__(self, embed: int, layers: int, heads: int, seq_len: int, batch: int):
        manual_seed(0)
        self.config = dict(embed=embed, layers=layers, heads=heads, seq_len=seq_len, batch=batch)
        self.model = GPT(VOCAB, embed, layers, heads, max_seq_len=seq_len)
        rng = np.random.default_rng(0)
        self.tokens, self.targets = (rng.integers(0, VOCAB, (batch, seq_len)) for _ in range(2))
        self.result = Measurement(self.config)
        self._measure_tape()
        self.step = compile_graph(self.model, self.tokens, self.targets, loss=F.cross_entropy)
        # The same step trading compute for memory: what it saves only a static graph can choose ahead.
        self.remat = compile_graph(self.model, self.tokens, self.targets, loss=F.cross_entropy, remat_policy="mincut")
        self._measure_graphs()

    @property
    def traced(self):
        """The training step as traced (forward and generated backward), before any pass."""
        return self.step.stages[0].graph

    def eager_step(self) -> Tensor:
        self.model.zero_grad()
        loss = F.cross_entropy(self.model(Tensor(self.tokens)), Tensor(self.targets))
        loss.backward()
        return loss

    def eager_loss(self) -> tuple[Tensor, Tensor, Tensor]:
        """The loss of one eager forward (its tape unwalked), with the input tensors it read."""
        tokens, targets = Tensor(self.tokens), Tensor(self.targets)
        return F.cross_entropy(self.model(tokens), targets), tokens, targets

    def _measure_tape(self) -> None:
        result = self.result
        with counting_eager_ops() as count:
            loss = self.eager_step()
        result.eager_ops = count.ops
        tape, _ = loss._tape()
        result.tape_nodes = len(tape)
        result.tape_result_bytes = sum(application.output.data.nbytes for application in tape)
        result.tape_ops = Counter(application.op for application in tape)
        self.eager_loss_value = float(loss.data)
        self.eager_grads = {name: parameter.grad.copy() for name, parameter in self.model.named_parameters()}

    def _measure_graphs(self) -> None:
        result, step = self.result, self.step
        result.graph_nodes, result.optimised_nodes = len(self.traced.nodes), len(step.graph.nodes)
        result.remat_nodes = len(self.remat.graph.nodes)
        result.graph_forward_ops = Counter(node.op for node in step.graph.nodes
                                           if node.provenance.differentiates is None and node.op != "constant")
        result.planned_buffers = len(step.program.graphs[0].plan.buffer_bytes)
        compiled_loss = float(step.run(self.tokens, self.targets))
        result.loss_difference = abs(compiled_loss - self.eager_loss_value)
        result.worst_gradient = max(self.gradient_differences().items(), key=lambda item: item[1])
        result.planned_bytes = {COMPILED: step.planned_bytes, REMAT: self.remat.planned_bytes}
        result.traced_bytes = {EAGER: traced_peak_bytes(self.eager_step),
                               COMPILED: traced_peak_bytes(lambda: step.run(self.tokens, self.targets)),
                               REMAT: traced_peak_bytes(lambda: self.remat.run(self.tokens, self.targets))}
        result.timeline = step.memory_timeline()

    def gradient_differences(self) -> dict[str, float]:
        """Per parameter, the largest difference between the compiled step's gradient and the tape's, as a
        fraction of the tape's largest element (at least 1e-3: a gradient of rounding noise has no scale)."""
        return {name: float(np.abs(self.step.grads[name] - value).max() / max(np.abs(value).max(), 1e-3))
                for name, value in self.eager_grads.items()}

    def contenders(self) -> dict[str, Callable[[], object]]:
        return {EAGER: self.eager_step, COMPILED: lambda: self.step.run(self.tokens, self.targets),
                REMAT: lambda: self.remat.run(self.tokens, self.targets)}

    def take_times(self, spreads: dict[str, Spread]) -> Measurement:
        self.result.times = dict(spreads)
        return self.result
