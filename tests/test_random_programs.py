"""Differential testing on random valid programs (tests/random_programs.py): each runs eagerly, compiled with no
passes, compiled with the default pipeline and with every optional pass, forward and backward, and its gradients
are compared with float64 central differences through the generated graph. Programs take zero-size inputs too,
and a second test feeds 0.0, -0.0, infinities and NaN; with PyTorch installed a third compares values and
gradients with torch's. Hypothesis shrinks a failure to the smallest program and the failing test prints its
text IR. tests/fuzz_programs.py runs the same checks on thousands of programs."""

import functools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphgpt
from graphgpt.passes.manager import DEFAULT_PIPELINE, OPTIONAL_PASSES
from conftest import fuse_elementwise_at_any_size
from gradient_paths import (assert_agree, assert_agree_with_torch, compiled_value_and_gradients,
                            eager_value_and_gradients, same_bits, torch_value_and_gradients)
from random_programs import build, draw_recipe, inputs_for

ALL_PASSES = list(DEFAULT_PIPELINE) + [name for name in OPTIONAL_PASSES if name != "fuse_elementwise"] + \
    [fuse_elementwise_at_any_size]
# Every pass with every fast-math rewrite (batched matmuls flattened, matmuls sharing an operand joined, pow by
# multiplies, ...): results within rounding on finite inputs; with infinities, NaN and -0.0 they may differ, as
# they are allowed to.
FAST_MATH_PASSES = ALL_PASSES + ["fuse_horizontal_matmuls"]


@st.composite
def recipes(draw):
    return draw_recipe(lambda label, options: draw(st.sampled_from(options), label=label))


def _check_paths(function, arrays, gradients: bool, special: bool, against_torch: bool) -> None:
    eager, eager_gradients = eager_value_and_gradients(function, arrays)
    plain = graphgpt.compile(function, *arrays, passes=[]).run(*arrays)
    assert same_bits(plain, eager), f"compiled without passes differs from eager: {plain} vs {eager}"
    traced, traced_gradients = compiled_value_and_gradients(function, arrays, passes=[])
    for position, (gradient, expected) in enumerate(zip(traced_gradients, eager_gradients)):
        assert same_bits(gradient, expected), f"gradient {position}: the compiled graph's differs from eager's"
    pipelines = [(None, False), (ALL_PASSES, False)] + ([] if special else [(FAST_MATH_PASSES, True)])
    for passes, fast_math in pipelines:
        name = f"passes {passes or 'default'}{' with fast math' if fast_math else ''}"
        optimised = graphgpt.compile(function, *arrays, passes=passes, verify_each=True, fast_math=fast_math)
        _, optimised_gradients = compiled_value_and_gradients(function, arrays, passes, fast_math)
        for what, actual, expected in [("the result", optimised.run(*arrays), plain)] + [
                (f"gradient {position}", gradient, expected)
                for position, (gradient, expected) in enumerate(zip(optimised_gradients, eager_gradients))]:
            if fast_math:
                assert_agree(actual, expected, f"{name} changed {what}", rtol=1e-9, atol=1e-12)
            else:  # exact rewrites only: the same bits
                assert same_bits(actual, expected), f"{name} changed {what}: {actual} vs {expected}"
    if gradients and not special and np.isfinite(eager):  # (a NaN objective, a mean of nothing: no differences)
        report = graphgpt.check_gradients(function, *arrays)
        assert report.passed, f"gradients differ from central differences:\n{report}"
    if against_torch:
        torch_value, torch_gradients = torch_value_and_gradients(function, arrays)
        assert_agree_with_torch(eager, torch_value, "the value differs from torch's")
        for position, (gradient, expected) in enumerate(zip(eager_gradients, torch_gradients)):
            assert_agree_with_torch(gradient, expected, f"gradient {position} differs from torch's")


def check_program(recipe, seed: int = 0, gradients: bool = True, special: bool = False,
                  against_torch: bool = False) -> None:
    """Raise AssertionError (with the program's text IR) if any path disagrees: eager and compiled as traced
    bit for bit, values and gradients; the optimising pipelines within rounding, with NaN and infinities in the
    same places; `gradients` against central differences (finite inputs only); `special` inputs hold 0.0, -0.0,
    infinities and NaN; `against_torch`: values and gradients as PyTorch computes them."""
    function = build(recipe)
    arrays = inputs_for(recipe, seed, special)
    try:
        with warnings.catch_warnings():
            if special:  # log(0), inf - inf and the like are what these inputs are for
                warnings.simplefilter("ignore", RuntimeWarning)
            _check_paths(function, arrays, gradients, special, against_torch)
    except AssertionError as error:
        traced = graphgpt.trace(function, *arrays).graph
        raise AssertionError(f"{error}\ninputs: {arrays}\nthe program, as traced:\n{traced}") from None


EXAMPLES = functools.partial(settings, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                             derandomize=True)


@EXAMPLES(max_examples=250)
@given(recipes())
def test_random_programs_agree_everywhere(recipe):
    check_program(recipe)


@EXAMPLES(max_examples=60)
@given(recipes())
def test_random_programs_agree_on_zeros_infinities_and_nan(recipe):
    check_program(recipe, seed=1, special=True)


@EXAMPLES(max_examples=80)
@given(recipes(), st.booleans())
def test_random_programs_match_torch(recipe, special):
    pytest.importorskip("torch")
    check_program(recipe, seed=2, gradients=False, special=special, against_torch=True)


def check_generated_kernels(recipe, seed: int, special: bool) -> None:
    """The numba backend's value and gradients against the NumPy backend's, both with the default pipeline: within
    float64 rounding of reordered sums (a generated kernel sums a row in vector lanes) and of exp, log, tanh and
    pow from another library (rtol 1e-9, as fast math's reorderings), with NaN and infinities in the same places."""
    function = build(recipe)
    arrays = inputs_for(recipe, seed, special)
    with warnings.catch_warnings():
        if special:
            warnings.simplefilter("ignore", RuntimeWarning)
        value, gradients = compiled_value_and_gradients(function, arrays, backend="numpy")
        generated, generated_gradients = compiled_value_and_gradients(function, arrays, backend="numba")
    try:
        for what, actual, expected in [("the result", generated, value)] + [
                (f"gradient {position}", actual, expected)
                for position, (actual, expected) in enumerate(zip(generated_gradients, gradients))]:
            assert_agree(actual, expected, f"generated kernels changed {what}", rtol=1e-9, atol=1e-12)
    except AssertionError as error:
        traced = graphgpt.trace(function, *arrays).graph
        raise AssertionError(f"{error}\ninputs: {arrays}\nthe program, as traced:\n{traced}") from None


# Fewer programs than above: each compiles its own kernels (a fraction of a second of JIT each, cached on disk).
@EXAMPLES(max_examples=40)
@given(recipes(), st.booleans())
def test_random_programs_agree_with_generated_kernels(recipe, special):
    pytest.importorskip("numba", reason="the generated kernels need numba")
    check_generated_kernels(recipe, seed=3, special=special)


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
