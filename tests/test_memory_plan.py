"""The memory plan: views it predicts are views at run time (NumPy makes no silent copy), no two live values
ever share a buffer, in-place choices are safe, results equal an unplanned evaluation bit for bit, and the plan
needs far less than keeping every intermediate."""

import numpy as np
import pytest

import graphgpt
from graphgpt.passes.schedule import VIEW, Schedule
from graphgpt.ir import get_op
from graphgpt.nn import functional as F
from graphgpt.passes.memory_plan import plan_memory
from conftest import make_gpt, make_tokens


def training_graph(passes=None, optimizer=None):
    model = make_gpt(vocab=13, embed=12, layers=2, heads=3)
    tokens, targets = make_tokens(13, 2, 7), make_tokens(13, 2, 7, seed=1)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy, passes=passes, optimizer=optimizer)
    return step, [tokens, targets]


def owner_check(graph, plan):
    """Walk the schedule over the arena's bytes: each write takes its buffer's byte range from whatever held any
    of it, and every read finds its value's bytes untouched since it was written."""
    root = {value.id: value.id for value in (*graph.inputs, *graph.params)}
    holding = {}  # value id -> its byte range, while no later write overlapped it

    def byte_range(storage):
        offset = plan.buffer_offsets[storage.buffer]
        return offset, offset + plan.buffer_bytes[storage.buffer]

    def check_read(value_id, reader):
        storage = plan.storage[root[value_id]]
        if storage.kind == "buffer":
            assert root[value_id] in holding, f"{reader} reads %{value_id}, but its buffer was written over"

    for node in graph.nodes:
        for value in node.inputs:
            check_read(value.id, node.describe())
        storage = plan.storage[node.output.id]
        root[node.output.id] = storage.source if storage.kind == "view" else node.output.id
        if storage.kind == "buffer":
            start, end = byte_range(storage)
            for other, (other_start, other_end) in list(holding.items()):
                if other_start < end and start < other_end:
                    del holding[other]
            holding[node.output.id] = (start, end)
    for value in graph.results():
        check_read(value.id, f"result %{value.id}")
    assert plan.arena_bytes >= max((end for _, end in map(byte_range, (s for s in plan.storage.values()
                                                                       if s.kind == "buffer"))), default=0)


@pytest.mark.parametrize("passes", [None, []])
def test_no_two_live_values_share_a_buffer(passes):
    step, _ = training_graph(passes, optimizer=graphgpt.optim.AdamW(lr=0.01))
    plan = plan_memory(step.graph)
    owner_check(step.graph, plan)
    assert plan.in_place_nodes > 0 and plan.updates_in_place > 0


def test_predicted_views_are_views_at_run_time():
    step, inputs = training_graph()
    executor = step.program.schedules[0]
    slots = executor.initial_slots(inputs, step._param_arrays())
    planned = {step_.output_slot: step_.out for step_ in executor.steps if step_.out is not None}
    planned.update((slot, array) for slot, array, _ in executor.fixed_views)
    views = 0
    for _, array, node in executor.fixed_views:  # views of planned buffers, made once with the schedule
        assert np.shares_memory(array, planned[executor.slot_of[node.inputs[0].id]]), f"{node.describe()} copied"
        views += 1
    views_made_per_run = 0
    for step_ in executor.steps:
        arrays = [slots[slot] for slot in step_.input_slots]
        if step_.mode == VIEW:
            result = step_.function(*arrays, **step_.attrs)
            assert np.shares_memory(result, arrays[0]), f"{step_.node.describe()} copied"
            views_made_per_run += 1
        else:
            result = step_.out
            step_.function(result, *arrays, **step_.attrs)
        slots[step_.output_slot] = result
    assert views + views_made_per_run > 50 and views > 0


@pytest.mark.parametrize("passes", [None, []])
def test_planned_run_equals_unplanned_evaluation(passes):
    step, inputs = training_graph(passes)
    graph = step.graph
    values = {}
    for value, array in zip(graph.inputs, inputs):
        values[value.id] = array
    for value in graph.params:
        values[value.id] = step.bindings[value.name].data
    for node in graph.nodes:  # every value in a fresh array: no reuse at all
        values[node.output.id] = get_op(node.op).evaluate([values[v.id] for v in node.inputs], node.attrs)
    planned = Schedule(graph).run(inputs, [step.bindings[value.name].data for value in graph.params])
    for value, array in zip(graph.outputs, planned):
        np.testing.assert_array_equal(array, values[value.id])


def test_plan_needs_far_less_than_keeping_everything():
    step, _ = training_graph()
    keep_all = step.stages[-1].keep_all_bytes
    assert step.planned_bytes <= 0.6 * keep_all


def test_owner_check_catches_a_plan_that_shares_a_live_buffer():
    step, _ = training_graph()
    plan = plan_memory(step.graph)
    # Give the embedding sum (read again by the residual add of block 0) the buffer of the first layer norm.
    first_add = next(node for node in step.graph.nodes if node.op == "add")
    first_norm = next(node for node in step.graph.nodes if node.op == "layer_norm")
    plan.storage[first_norm.output.id] = plan.storage[first_add.output.id]
    with pytest.raises(AssertionError, match="its buffer was written over"):
        owner_check(step.graph, plan)


def test_planned_buffers_are_carved_at_their_offsets_and_aligned():
    from graphgpt.passes.schedule import BUFFER_ALIGNMENT
    step, _ = training_graph()
    schedule = step.program.schedules[0]
    plan = schedule.plan
    base = schedule.buffers[0].ctypes.data - plan.buffer_offsets[0]
    assert base % BUFFER_ALIGNMENT == 0
    for buffer, offset, size in zip(schedule.buffers, plan.buffer_offsets, plan.buffer_bytes):
        assert buffer.nbytes == size and buffer.ctypes.data == base + offset and offset % BUFFER_ALIGNMENT == 0
    assert schedule.scratch.ctypes.data == base + plan.arena_bytes  # after every buffer
    assert plan.arena_bytes < sum(plan.buffer_bytes)  # buffers of disjoint lifetimes share memory


def backends_to_run():
    """The NumPy backend, and the numba backend's generated kernels when numba is installed."""
    names = ["numpy"]
    try:
        import numba  # noqa: F401
        names.append("numba")
    except ImportError:
        pass
    return names


def graph_reading_a_value_and_its_transpose(into_param: bool):
    """out = y * y - y^T with y dying at that one fused node (or y the parameter the result updates): writing
    out over y element by element would read elements of y^T already overwritten."""
    from graphgpt.ir import GraphBuilder, TensorType
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((48, 48), "float32"))
    p = builder.add_param("p", TensorType((48, 48), "float32"))
    y = p if into_param else builder.add_node("add", [x, p])
    transposed = builder.add_node("transpose", [y], {"perm": (1, 0)})
    out = builder.add_node("fused_elementwise", [y, transposed, x],
                           {"program": (("mul", (0, 0)), ("sub", (3, 1)), ("add", (4, 2)))})
    if into_param:
        return builder.finish([x], [(p, out)]), out
    return builder.finish([out]), out


@pytest.mark.parametrize("into_param", [False, True])
@pytest.mark.parametrize("backend", backends_to_run())
def test_an_output_is_never_written_over_memory_it_also_reads_through_a_view(into_param, backend):
    from graphgpt.passes import backends
    graph, out = graph_reading_a_value_and_its_transpose(into_param)
    plan = plan_memory(graph)
    assert plan.written_over(out.producer) is None
    rng = np.random.default_rng(0)
    x, p = (rng.standard_normal((48, 48)).astype(np.float32) for _ in range(2))
    y = p if into_param else x + p
    expected = y * y - y.T + x
    parameter = p.copy()
    outputs = Schedule(graph, plan, backend=backends.backend_named(backend)).run([x], [parameter])
    np.testing.assert_allclose(parameter if into_param else outputs[0], expected, rtol=1e-6, atol=1e-6)


def test_an_output_written_over_a_dying_input_is_known_to_the_schedule():
    """Without the view, out takes y's buffer, and the plan says which input it writes over."""
    from graphgpt.ir import GraphBuilder, TensorType
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((48, 48), "float32"))
    y = builder.add_node("add", [x, x])
    out = builder.add_node("fused_elementwise", [x, y], {"program": (("mul", (1, 1)), ("sub", (2, 0)))})
    plan = plan_memory(builder.finish([out]))
    assert plan.written_over(out.producer) == 1 and plan.written_over(y.producer) is None
