"""The chain rule, written once for both worlds: walk recorded op applications backwards, run each op's gradient
rule (`vjp` in the registry), and sum the contributions of a value used more than once (fan-out).

The autodiff pass runs it over graph values (ir.symbolic.Symbol), so the backward pass comes out as graph nodes;
the eager tape runs it over graphgpt.Tensor, computing at once. The rules are the same functions in both.

A rule is called as `vjp(g, out, *inputs, **attrs)` and returns one entry per input: a zero-argument function
computing that input's gradient, or None where the input has no gradient (integer indices, a bool condition).
Only the gradients somebody needs are computed: a thunk for a constant's gradient is never called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from .errors import GraphError
from .ops.registry import get_op  # not the ops package: its __init__ imports ops/fused.py, which uses this module


@dataclass(frozen=True)
class Application:
    """One recorded op application: output = op[attrs](*inputs). `origin` is whatever the caller wants back in
    `on_rule` (the forward node, so backward nodes can name it)."""

    op: str
    attrs: dict
    inputs: tuple
    output: Any
    origin: Any = field(default=None, compare=False)


def backpropagate(applications: Sequence[Application], loss: Any, seed: Any, wrt: Iterable[Any],
                  key: Callable[[Any], Hashable],
                  on_rule: Optional[Callable[[Application], None]] = None,
                  on_final: Optional[Callable[[Hashable, Any], None]] = None) -> dict[Hashable, Any]:
    """Gradients of `loss` with respect to each handle in `wrt`, starting from `seed` (d loss / d loss).

    `applications` are in forward (topological) order; `key` maps a handle to a stable identity. `on_rule` is
    called before each gradient rule runs; `on_final(key, gradient)` once the gradient of an intermediate value
    is complete (every use of it has contributed). Returns key -> gradient handle for the `wrt` handles that the
    loss depends on (the others are absent)."""
    wanted = {key(handle) for handle in wrt}
    # Values that depend on a wanted handle through float ops: only these need gradients.
    depends = set(wanted)
    for application in applications:
        if application.output.type.is_float and any(key(i) in depends for i in application.inputs):
            depends.add(key(application.output))

    gradients: dict[Hashable, Any] = {key(loss): seed}
    for application in reversed(applications):
        output_key = key(application.output)
        g = gradients.get(output_key) if output_key in wanted else gradients.pop(output_key, None)
        if g is None:
            continue
        if on_final is not None:
            on_final(output_key, g)
        needs = [key(handle) in depends for handle in application.inputs]
        if not any(needs):
            continue
        rule = get_op(application.op).vjp
        if rule is None:
            raise GraphError(f"op {application.op!r} has no gradient rule: it is a backward kernel, and "
                             f"second derivatives are not supported")
        if on_rule is not None:
            on_rule(application)
        thunks = rule(g, application.output, *application.inputs, **application.attrs)
        for position, (handle, need, thunk) in enumerate(zip(application.inputs, needs, thunks)):
            if not need:
                continue
            if thunk is None:
                raise GraphError(f"op {application.op!r} gives no gradient for its input {position} ({handle.type}), "
                                 f"which the loss depends on")
            contribution = thunk()
            if contribution.type != handle.type:
                raise GraphError(f"gradient rule of {application.op!r} returned {contribution.type} for input "
                                 f"{position} of type {handle.type}")
            input_key = key(handle)
            previous = gradients.get(input_key)
            gradients[input_key] = contribution if previous is None else previous + contribution
    return {name: gradients[name] for name in wanted if name in gradients}
