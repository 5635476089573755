"""When does compiling pay off? Compiling costs time once; each step after it saves the difference between the
eager step and the compiled one. The break-even number of steps is the one-off cost over the saving per step,
for a training step (compile and first step, against steps of the tape) and for generation (compiling the
prefill and decode graphs over a KV cache, against GPT.generate(use_cache=False), which reruns the model eagerly
on the whole context for every token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import compile as compile_graph
from ..generation import compile_generation
from ..nn import functional as F
from ..tensor import Tensor
from ..timing import Spread, milliseconds
from .measurement import COMPILED, EAGER, Subject

COMPILE_STEP, COMPILE_GENERATION = "compile + first step", "compile generation"
EAGER_GENERATE, COMPILED_GENERATE = "generate eagerly", "generate compiled"


def break_even(one_off_ms: float, saving_ms: float) -> Optional[int]:
    """Steps after which the one-off cost is paid back by the saving per step; None if nothing is saved."""
    if saving_ms <= 0:
        return None
    return max(1, math.ceil(one_off_ms / saving_ms))


@dataclass
class Payoff:
    prompt_tokens: int
    new_tokens: int
    same_tokens: bool            # the compiled generation drew exactly the eager one's tokens (greedy)
    times: dict                  # contender -> Spread, including the training step's eager and compiled steps

    @property
    def training_one_off_ms(self) -> float:
        """Compile and first step, less a step: what compiling costs beyond the step it also runs."""
        return self.times[COMPILE_STEP].median - self.times[COMPILED].median

    @property
    def training_saving_ms(self) -> float:
        return self.times[EAGER].median - self.times[COMPILED].median

    @property
    def training_break_even(self) -> Optional[int]:
        return break_even(self.training_one_off_ms, self.training_saving_ms)

    def per_token_ms(self, contender: str) -> float:
        return self.times[contender].median / self.new_tokens

    @property
    def generation_saving_ms(self) -> float:
        """Saved per generated token."""
        return self.per_token_ms(EAGER_GENERATE) - self.per_token_ms(COMPILED_GENERATE)

    @property
    def generation_break_even(self) -> Optional[int]:
        """Tokens after which compiling the generation has paid for itself."""
        return break_even(self.times[COMPILE_GENERATION].median, self.generation_saving_ms)

    def spreads(self) -> dict[str, Spread]:
        return {name: self.times[name] for name in (COMPILE_STEP, COMPILE_GENERATION, EAGER_GENERATE,
                                                    COMPILED_GENERATE)}

    def paragraph(self) -> str:
        def after(count: Optional[int], unit: str) -> str:
            return f"after {count} {unit}{'s' * (count != 1)}" if count else "never: nothing is saved per " + unit

        training = (f"Compiling the training step took {milliseconds(self.training_one_off_ms)} ms beyond the "
                    f"step it runs, and each compiled step saves {milliseconds(self.training_saving_ms)} ms against "
                    f"the tape, so compiling pays {after(self.training_break_even, 'step')}.")
        generation = (f"Compiling generation (decode and prefill graphs over a KV cache) took "
                      f"{milliseconds(self.times[COMPILE_GENERATION].median)} ms; generating "
                      f"{self.new_tokens} tokens after a {self.prompt_tokens}-token prompt took "
                      f"{milliseconds(self.per_token_ms(COMPILED_GENERATE))} ms a token compiled against "
                      f"{milliseconds(self.per_token_ms(EAGER_GENERATE))} eagerly (the whole context again for every "
                      f"token), so it pays {after(self.generation_break_even, 'token')}"
                      f"{'' if self.same_tokens else ' (but the two drew different tokens)'}.")
        both_soon = all(count is not None and count < 1000
                        for count in (self.training_break_even, self.generation_break_even))
        return f"{training} {generation}" + (" A training run of thousands of steps, or a reply of hundreds of "
                                             "tokens, is past both points; one forward in a notebook is not."
                                             if both_soon else "")


class PayoffRuns:
    """The contenders for the payoff question on the base subject; `result(spreads)` once they are timed."""

    def __init__(self, subject: Subject):
        self.subject = subject
        model, seq_len = subject.model, subject.config["seq_len"]
        self.prompt = np.asarray(subject.tokens[0, :max(1, seq_len // 4)])
        self.new_tokens = max(1, seq_len - len(self.prompt))  # up to the window: no sliding
        self.generation = compile_generation(model)
        compiled = self.generation.generate(self.prompt[None], self.new_tokens, top_k=1)[0]
        self.same_tokens = bool(np.array_equal(compiled, self._generate_eagerly()))

    def _generate_eagerly(self) -> np.ndarray:
        return self.subject.model.generate(Tensor(self.prompt), self.new_tokens, top_k=1, seed=0,
                                           use_cache=False).data

    def _compile_generation(self) -> None:
        compile_generation(self.subject.model).prefill_for(len(self.prompt))

    def _compile_step(self) -> None:
        subject = self.subject
        compile_graph(subject.model, subject.tokens, subject.targets, loss=F.cross_entropy).run(
            subject.tokens, subject.targets)

    def contenders(self) -> dict[str, Callable[[], object]]:
        return {COMPILE_STEP: self._compile_step, COMPILE_GENERATION: self._compile_generation,
                EAGER_GENERATE: self._generate_eagerly,
                COMPILED_GENERATE: lambda: self.generation.generate(self.prompt[None], self.new_tokens, top_k=1)}

    def result(self, spreads: dict[str, Spread], step_times: dict[str, Spread]) -> Payoff:
        times = {**spreads, EAGER: step_times[EAGER], COMPILED: step_times[COMPILED]}
        return Payoff(len(self.prompt), self.new_tokens, self.same_tokens, times)
