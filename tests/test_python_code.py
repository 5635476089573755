"""The straight-line code a schedule runs (passes/python_code.py): a view of a parameter or an input is kept from run
to run and made again when that array is another one, so a run always reads the arrays it is given."""

import numpy as np

from graphgpt.ir import GraphBuilder, TensorType
from graphgpt.passes.schedule import Schedule


def product_with_weight_views():
    """x @ W^T and exp of rows of W^T: a view of a parameter, and a view of that view."""
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((2, 4), "float32"))
    weight = builder.add_param("weight", TensorType((3, 4), "float32"))
    turned = builder.add_node("transpose", [weight], {"perm": (1, 0)})
    rows = builder.add_node("slice", [turned], {"slices": ((1, 4, 2), (0, 3, 1))})
    return builder.finish([builder.add_node("matmul", [x, turned]), builder.add_node("exp", [rows])])


def test_views_of_a_parameter_follow_its_array():
    graph = product_with_weight_views()
    schedule = Schedule(graph)
    assert schedule.code.source.count("is not k") == 2  # both views are kept
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4), dtype=np.float32)
    first, second = (rng.standard_normal((3, 4), dtype=np.float32) for _ in range(2))
    for weight in (first, second, first):  # another array each run, then the first again
        product, exps = schedule.run([x], [weight])
        np.testing.assert_array_equal(product, x @ weight.T)
        np.testing.assert_array_equal(exps, np.exp(weight.T[1:4:2]))
    first[0, 0] = 5.0  # written in place: the kept view sees it
    np.testing.assert_array_equal(schedule.run([x], [first])[0], x @ first.T)


def test_views_of_an_input_follow_its_array():
    """A combine graph's inputs are the same arrays at every run (a shard's buffers): views of them are kept too."""
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((4, 3), "float32"))
    rows = builder.add_node("slice", [builder.add_node("transpose", [x], {"perm": (1, 0)})],
                            {"slices": ((0, 3, 2), (1, 4, 1))})
    schedule = Schedule(builder.finish([builder.add_node("exp", [rows])]))
    assert schedule.code.source.count("is not k") == 2
    rng = np.random.default_rng(1)
    first, second = (rng.standard_normal((4, 3), dtype=np.float32) for _ in range(2))
    for x in (first, second, first, first[::-1]):  # another array each run, the first again, a strided view of it
        np.testing.assert_array_equal(schedule.run([x], [])[0], np.exp(x.T[0:3:2, 1:4]))
    first[1, 0] = 7.0  # written in place: the kept view sees it
    np.testing.assert_array_equal(schedule.run([first], [])[0], np.exp(first.T[0:3:2, 1:4]))
