"""The guards of a symbolic trace (ir/dims.py): a ShapeEnv holds the example sizes that answer the questions no
size settles (`T <= 64`), records each answer as a Guard the graph then assumes, and says whether given sizes pass
them all. `with shape_env(env):` makes it answer the questions asked in this thread.

    env = ShapeEnv({"B": 2, "T": 16})
    with shape_env(env):
        decide(T, "<=", 64)           # True, recorded: the guard T <= 64
    env.failing_guard({"B": 1, "T": 65})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from .dims import COMPARISONS, NEGATED, Size, SymbolicShapeError, ACTIVE_SHAPE_ENV, substitute


@dataclass(frozen=True)
class Guard:
    """An answer taken from the example sizes: `left op right` held there, and the graph assumes it."""

    left: Size
    op: str
    right: Size
    where: str = ""

    def holds(self, sizes: Mapping[str, int]) -> bool:
        return COMPARISONS[self.op](substitute(self.left, sizes), substitute(self.right, sizes))

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}" + (f" ({self.where})" if self.where else "")


@dataclass
class ShapeEnv:
    """The symbols of one symbolic trace, the example sizes that answer its questions, and the guards recorded.

    `locate()` says where the question was asked (the user's source line); `allows_specialising(filename)` says
    whether code in that file may turn a symbol into its example number (model code may; the IR and passes must
    not)."""

    hints: dict[str, int]
    locate: Callable[[], str] = lambda: ""
    allows_specialising: Callable[[str], bool] = lambda filename: True
    guards: list[Guard] = field(default_factory=list)
    recording: bool = True  # False once traced: the passes may use the guards, not add to them

    def answer(self, left: Size, op: str, right: Size) -> bool:
        known = self._known(left, op, right)
        if known is not None:
            return known
        if not self.recording:
            raise SymbolicShapeError(f"cannot decide {left} {op} {right}: it holds for some sizes and not for "
                                     f"others, and only the trace may add a guard (this code must not ask)")
        outcome = COMPARISONS[op](substitute(left, self.hints), substitute(right, self.hints))
        self.guards.append(Guard(left, op if outcome else NEGATED[op], right, self.locate()))
        return outcome

    def _known(self, left: Size, op: str, right: Size) -> Optional[bool]:
        """The answer a guard already gives to this very question (or to its negation), if any."""
        question = (str(left), str(right))
        for guard in self.guards:
            if (str(guard.left), str(guard.right)) == question and guard.op in (op, NEGATED[op]):
                return guard.op == op
        return None

    def failing_guard(self, sizes: Mapping[str, int]) -> Optional[Guard]:
        return next((guard for guard in self.guards if not guard.holds(sizes)), None)


class shape_env:
    """`with shape_env(env):` makes `env` answer the size questions asked in this thread (or task)."""

    def __init__(self, env: ShapeEnv):
        self.env = env

    def __enter__(self) -> ShapeEnv:
        self._token = ACTIVE_SHAPE_ENV.set(self.env)
        return self.env

    def __exit__(self, *exc) -> None:
        ACTIVE_SHAPE_ENV.reset(self._token)
