"""Where does the time go? The same model at three sequence lengths (the comparison's length series): the tape
runs the same number of ops at every length, each paying Python dispatch, a type check and a fresh result array
(and a tape entry, for the forward ops backward walks), while the arithmetic per op grows with the length; the schedule paid its per-op work once, when
it lowered the graph to a flat list of NumPy calls into planned buffers. Time per op for both, and the tape's extra
time per op, (eager - compiled) / ops, from the interleaved step times.
"""

from __future__ import annotations

from dataclasses import dataclass

from .measurement import COMPILED, EAGER, Measurement


def _microseconds(values) -> str:
    return ", ".join(f"{value:.0f}" for value in values) + " µs"


@dataclass
class TimePerOp:
    sizes: list   # Measurement per sequence length

    def eager_per_op_us(self, measured: Measurement) -> float:
        return measured.median_ms(EAGER) * 1e3 / measured.eager_ops

    def compiled_per_node_us(self, measured: Measurement) -> float:
        return measured.median_ms(COMPILED) * 1e3 / measured.optimised_nodes

    def overhead_per_op_us(self, measured: Measurement) -> float:
        """The tape's time beyond the compiled step's, per op it ran."""
        return (measured.median_ms(EAGER) - measured.median_ms(COMPILED)) * 1e3 / measured.eager_ops

    def overhead_share(self, measured: Measurement) -> float:
        """The share of the tape's step that the compiled step does not spend."""
        return 1 - measured.median_ms(COMPILED) / measured.median_ms(EAGER)

    def paragraph(self) -> str:
        lengths = ", ".join(str(m.config["seq_len"]) for m in self.sizes)
        base = self.sizes[len(self.sizes) // 2]
        return (f"At sequences of {lengths} tokens the tape ran "
                f"{', '.join(str(m.eager_ops) for m in self.sizes)} ops per step (forward and backward), at "
                f"{_microseconds(map(self.eager_per_op_us, self.sizes))} an op; the compiled schedule ran "
                f"{', '.join(str(m.optimised_nodes) for m in self.sizes)} nodes at "
                f"{_microseconds(map(self.compiled_per_node_us, self.sizes))} a node. The tape's extra time per op "
                f"is {_microseconds(map(self.overhead_per_op_us, self.sizes))}: Python dispatch, a type check and "
                f"a fresh result array for every op, and a tape entry for each of the {base.tape_nodes} forward ops "
                f"backward walks (their results, {base.tape_result_bytes / 2**20:.2f} MiB at "
                f"{base.config['seq_len']} tokens, kept until backward), paid again every step. The schedule "
                f"did that work once, lowering the graph to a flat list of NumPy calls writing into "
                f"{base.planned_buffers} buffers planned ahead, and saves "
                f"{', '.join(f'{self.overhead_share(m):.0%}' for m in self.sizes)} of the tape's step time: as "
                f"each op's arithmetic grows with the length, the fixed cost per op weighs less.")
