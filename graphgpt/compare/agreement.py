"""Do they agree? The loss and every gradient of the compiled step against the tape's, and both against float64
central differences (graphgpt/gradcheck.py, on a float64 copy of the model, so the check measures the gradient
rules rather than float32 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..gradcheck import GradientReport, check_gradients
from ..nn import functional as F
from .measurement import Subject

# Per parameter, a seeded random subset of elements, on the batch's first sequence: two evaluations of the loss
# per element, for the graph's gradients and again for the tape's (~300 float64 forwards each at 2 layers).
ELEMENTS_CHECKED = 4


@dataclass
class Agreement:
    loss_difference: float
    gradient_differences: dict     # parameter -> compiled vs tape, as a fraction of the tape's largest element
    graph_check: GradientReport    # the generated backward graph against central differences
    tape_check: GradientReport     # the tape's backward against them

    @property
    def worst_gradient(self) -> tuple[str, float]:
        return max(self.gradient_differences.items(), key=lambda item: item[1])

    def paragraph(self) -> str:
        name, difference = self.worst_gradient
        graph, tape = self.graph_check.worst, self.tape_check.worst
        verdict = "both within" if self.graph_check.passed and self.tape_check.passed else "not both within"
        return (f"The compiled step's loss differs from the tape's by {self.loss_difference:.1e}, and of its "
                f"{len(self.gradient_differences)} gradients the one furthest from the tape's ({name}) differs by "
                f"{difference:.1e} of its scale: the same gradient rules, run in the same order. Against float64 "
                f"central differences ({ELEMENTS_CHECKED} elements of every parameter, on the batch's first "
                f"sequence), the generated backward graph's worst relative error is {graph.relative_error:.1e} "
                f"({graph.name}) and the tape's "
                f"{tape.relative_error:.1e} ({tape.name}), {verdict} the tolerance of "
                f"{self.graph_check.tolerance:.0e}.")


def measure_agreement(subject: Subject) -> Agreement:
    arguments = (subject.model, subject.tokens[:1], subject.targets[:1])
    checks = [check_gradients(*arguments, loss=F.cross_entropy, max_elements=ELEMENTS_CHECKED, through=through)
              for through in ("graph", "eager")]
    return Agreement(subject.result.loss_difference, subject.gradient_differences(), *checks)
