"""Differential testing on random valid programs (tests/random_programs.py): each runs eagerly, compiled with no
passes, compiled with the default pipeline and with every optional pass, and its gradients are compared with
float64 central differences through the generated graph. Hypothesis shrinks a failure to the smallest program
and the failing test prints its text IR. tests/fuzz_programs.py runs the same checks on thousands of programs."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphgpt
from graphgpt.passes.manager import DEFAULT_PIPELINE, OPTIONAL_PASSES
from conftest import fuse_elementwise_at_any_size
from random_programs import build, draw_recipe, inputs_for

ALL_PASSES = list(DEFAULT_PIPELINE) + [name for name in OPTIONAL_PASSES if name != "fuse_elementwise"] + \
    [fuse_elementwise_at_any_size]


@st.composite
def recipes(draw):
    return draw_recipe(lambda label, options: draw(st.sampled_from(options), label=label))


def check_program(recipe, seed: int = 0, gradients: bool = True) -> None:
    """Raise AssertionError (with the program's text IR) if any path disagrees."""
    function = build(recipe)
    arrays = inputs_for(recipe, seed)
    unoptimised = graphgpt.compile(function, *arrays, passes=[])
    try:
        eager = function(*[graphgpt.Tensor(array) for array in arrays]).data
        plain = unoptimised.run(*arrays)
        np.testing.assert_array_equal(plain, eager, err_msg="compiled without passes differs from eager")
        for passes in (None, ALL_PASSES):
            optimised = graphgpt.compile(function, *arrays, passes=passes, verify_each=True)
            np.testing.assert_allclose(optimised.run(*arrays), plain, rtol=1e-9, atol=1e-12,
                                       err_msg=f"passes {passes or 'default'} changed the result")
        if gradients:
            report = graphgpt.check_gradients(function, *arrays)
            assert report.passed, f"gradients differ from central differences:\n{report}"
    except AssertionError as error:
        raise AssertionError(f"{error}\nthe program, as traced:\n{unoptimised.graph}") from None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(recipes())
def test_random_programs_agree_everywhere(recipe):
    check_program(recipe)


def test_the_checks_catch_a_broken_pass(monkeypatch):
    """A pass that changes results must make check_program fail (the harness can fail)."""
    from graphgpt.passes import manager
    from graphgpt.passes.result import PassResult
    from graphgpt.passes.rewrite import rewrite_nodes

    def scale_exps(graph):  # not an involution: the manager repeats passes until nothing changes
        def rule(node, inputs, context):
            if node.op != "exp":
                return None
            return context.emit("mul", [context.emit("exp", inputs), context.constant(np.array(1.5))])
        return PassResult(rewrite_nodes(graph, [rule], header="broken")[0], {})

    monkeypatch.setitem(manager.PASSES, "simplify", scale_exps)
    recipe = draw_recipe(lambda label, options: {"kind": "unary", "op": "exp"}.get(label, options[0]))
    assert recipe.ops() == {"exp"}
    try:
        check_program(recipe, gradients=False)
    except AssertionError as error:
        assert "changed the result" in str(error)
    else:
        raise AssertionError("a result-changing pass went unnoticed")
