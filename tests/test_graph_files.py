"""Saved graphs and the verifier. JSON round trips exactly (text, provenance, constants bit for bit, updates,
results when run); hostile files are refused with a SerializationError saying what is wrong, in bounded time,
without executing anything; the verifier rejects each kind of broken graph and names the problem."""

import copy
import json
import pickle
import re
import time

import numpy as np
import pytest

import graphgpt
import graphgpt.ir.serialize as serialize
from graphgpt.passes.schedule import Schedule
from graphgpt.ir import (GraphBuilder, SerializationError, TensorType, VerificationError, format_graph,
                         graph_from_json, graph_to_json, load_graph, save_graph, verify)
from graphgpt.nn import functional as F
from conftest import make_gpt, make_tokens


@pytest.fixture(scope="module")
def train_step():
    model = make_gpt(vocab=13, embed=12, layers=2, heads=3)
    tokens = make_tokens(13, 2, 7)
    return graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy,
                            optimizer=graphgpt.optim.Adam(lr=0.01)), tokens


def run(graph, tokens, bindings):
    params = [np.array(bindings[value.name].data, copy=True) for value in graph.params]
    return Schedule(graph).run([tokens, tokens], params), params


def test_round_trip_is_exact(train_step, tmp_path):
    step, tokens = train_step
    path = tmp_path / "train.json"
    save_graph(step.graph, path)
    loaded = load_graph(path)
    assert format_graph(loaded) == format_graph(step.graph)
    assert len(loaded.updates) == len(step.graph.updates) > 0
    for original, copied in zip(step.graph.nodes, loaded.nodes):
        assert copied.provenance == original.provenance
        if original.op == "constant":
            a, b = original.attrs["value"], copied.attrs["value"]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    (before, params_before), (after, params_after) = run(step.graph, tokens, step.bindings), \
        run(loaded, tokens, step.bindings)
    for x, y in zip(before + params_before, after + params_after):
        np.testing.assert_array_equal(x, y)


def test_causal_mask_survives(tmp_path):
    # The GPT reads its mask as a buffer (a parameter of the graph): a traced causal mask is a constant.
    graph = graphgpt.compile(lambda x: x + F.causal_mask(5), np.zeros((5, 5), np.float32), passes=[]).graph
    text = json.dumps(graph_to_json(graph), allow_nan=False)  # strict JSON: -inf travels inside base64
    masks = [node.attrs["value"] for node in serialize.graph_from_text(text).nodes
             if node.op == "constant" and node.output.shape == (5, 5)]
    assert masks and np.isneginf(masks[0][0, 1]) and masks[0][1, 0] == 0


def valid_json(train_step):
    return graph_to_json(train_step[0].graph)


def corrupt(data, path, value):
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()
HUGE = "f32[100000000000,100000000000]"


def first_node(data, op):
    return next(index for index, node in enumerate(data["nodes"]) if node["op"] == op)


def hostile_cases(data):
    constant = first_node(data, "constant")
    matmul = first_node(data, "matmul")
    layer_norm = first_node(data, "layer_norm")
    later_id = data["nodes"][-1]["id"]
    assert any(record["id"] == 1 for record in data["params"])  # so that True, == 1, would name a value
    return {
        "wrong format": (corrupt(data, ["format"], "pytorch"), "not a graphgpt graph"),
        "future version": (corrupt(data, ["version"], 99), "version 99 is not supported"),
        "missing field": (corrupt(data, ["nodes"], DELETE), "expected fields"),
        "extra field": (corrupt(data, ["extra"], 1), "expected fields"),
        "unknown op": (corrupt(data, ["nodes", matmul, "op"], "system"), "unknown op 'system'"),
        "forward reference (cycle)": (corrupt(data, ["nodes", matmul, "inputs", 0], later_id),
                                      "not defined earlier in the file"),
        "unknown input id": (corrupt(data, ["nodes", matmul, "inputs", 0], 10**9), "not defined earlier"),
        "duplicate id": (corrupt(data, ["nodes", matmul, "id"], data["nodes"][0]["id"]), "defined twice"),
        "string for an int": (corrupt(data, ["nodes", matmul, "id"], "7"), "field 'id' must be int"),
        "bool for an int": (corrupt(data, ["version"], True), "field 'version' must be int"),
        "unparsable type": (corrupt(data, ["inputs", 0, "type"], "tensor<?>"), "bad type"),
        "wrong recorded type": (corrupt(data, ["nodes", matmul, "type"], "f32[1,1]"), "recorded type f32\\[1,1\\]"),
        "absurd input type": (corrupt(data, ["inputs", 0, "type"], HUGE), "absurdly large"),
        "absurd constant": (corrupt(data, ["nodes", constant, "attrs", "value"],
                                    {"dtype": "float32", "shape": [10**6, 10**6], "base64": "AAAA"}),
                            "larger than the limit"),
        "short constant data": (corrupt(data, ["nodes", constant, "attrs", "value", "base64"], "AAAA"),
                                "needs .* base64 characters"),
        "unknown attribute": (corrupt(data, ["nodes", matmul, "attrs"], {"fast": True}), "unknown attributes"),
        "bad update": (corrupt(data, ["updates", 0], [0]), "must be \\[parameter id, value id\\]"),
        "update of a non-parameter": (corrupt(data, ["updates", 0, 0], data["inputs"][0]["id"]),
                                      "updates must write a value of the same type into a parameter"),
        # JSON true == 1 and hashes as 1: it must not name the value whose id is 1.
        "bool for an output id": (corrupt(data, ["outputs", 0], True), "output True is not defined"),
        "bool for a node's input id": (corrupt(data, ["nodes", matmul, "inputs", 0], True),
                                       "input True is not defined"),
        "bool for differentiates": (corrupt(data, ["nodes", matmul, "provenance", "differentiates"], True),
                                    "field 'differentiates' must be int or NoneType"),
        "type not as written": (corrupt(data, ["inputs", 0, "type"], data["inputs"][0]["type"].replace("[", "[ ")),
                                "expected it written as|cannot read the size"),
        "type with underscores": (corrupt(data, ["inputs", 0, "type"], data["inputs"][0]["type"].replace("2", "0_2")),
                                  "expected it written as|cannot read the size"),
        "float attribute of 10**400": (corrupt(data, ["nodes", layer_norm, "attrs", "eps"], 10**400),
                                       "an integer of 401 digits, more than the 64 allowed"),
    }


def test_hostile_graph_files_are_refused(train_step, tmp_path):
    data = valid_json(train_step)
    cases = hostile_cases(data)
    assert len(cases) >= 24
    for name, (hostile, message) in cases.items():
        started = time.perf_counter()
        with pytest.raises(SerializationError, match=message):
            serialize.graph_from_text(json.dumps(hostile))
        assert time.perf_counter() - started < 5, name


@pytest.mark.parametrize("content,message", [
    (b"", "not valid JSON"),
    (b"{\"format\": ", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[" * 100000, "nested too deeply|not valid JSON"),
    (b'{"format": NaN}', "JSON constant NaN is not allowed"),
    (pickle.dumps({"format": "graphgpt-graph"}), "not valid JSON"),
    (b"[1, 2, 3]", "expected an object"),
])
def test_malformed_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SerializationError, match=message):
        load_graph(path)


def test_numbers_beyond_a_float_are_refused_where_they_are(train_step):
    """A float attribute too large for a float (a dict built in Python, not JSON) is a SerializationError
    naming the node and the attribute, not an OverflowError; bools are not ids here either."""
    data = valid_json(train_step)
    layer_norm = first_node(data, "layer_norm")
    with pytest.raises(SerializationError, match=f"node {layer_norm} .*attribute 'eps': int too large"):
        graph_from_json(corrupt(data, ["nodes", layer_norm, "attrs", "eps"], 10**400))
    with pytest.raises(SerializationError, match="must be \\[parameter id, value id\\]"):
        graph_from_json(corrupt(data, ["updates", 0], [True, data["updates"][0][1]]))


# Edits of a valid file's text that json.dumps cannot write; each was accepted (last key winning, 1e400 read as
# infinity) or raised a bare ValueError before.
TEXT_EDITS = {
    "duplicate key": (lambda text: text.replace('"header": ', '"header": "evil", "header": ', 1),
                      "key 'header' appears twice in one object"),
    "float beyond a float": (lambda text: re.sub(r'"eps": [^,}]+', '"eps": 1e400', text, count=1),
                             "the number 1e400 is beyond the range of a float"),
    "5000-digit integer": (lambda text: text.replace('"version": 2', '"version": ' + "7" * 5000, 1),
                           "an integer of 5000 digits"),
    "nesting 65 deep": (lambda text: text.replace('"header": ', '"header": ' + "[" * 65 + "]" * 65 + ', "x": ', 1),
                        "nested too deeply: 66 levels"),
}


@pytest.mark.parametrize("edit", list(TEXT_EDITS))
def test_strict_json_in_an_otherwise_valid_file(train_step, tmp_path, edit):
    change, message = TEXT_EDITS[edit]
    text = json.dumps(valid_json(train_step))
    changed = change(text)
    assert changed != text
    path = tmp_path / "graph.json"
    path.write_text(changed)
    with pytest.raises(SerializationError, match=message):
        load_graph(path)


def test_brackets_and_escaped_quotes_inside_strings_are_not_nesting(train_step):
    """The depth bound counts only structure: a header full of brackets and escaped quotes still loads."""
    data = valid_json(train_step)
    data["header"] = '\\"[[[[' * 40 + "{" * 100 + '"'
    assert serialize.graph_from_text(json.dumps(data)).header == data["header"]


def test_truncated_file_and_missing_path(train_step, tmp_path):
    path = tmp_path / "train.json"
    save_graph(train_step[0].graph, path)
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    with pytest.raises(SerializationError, match="truncated or corrupt"):
        load_graph(path)
    with pytest.raises(SerializationError, match="cannot read graph file"):
        load_graph(tmp_path / "nowhere.json")


def test_loading_never_unpickles():
    code = [line for line in open(serialize.__file__).read().splitlines() if not line.lstrip().startswith("#")]
    code = "\n".join(code).split('"""')[0::2]  # outside docstrings
    assert not any(word in part for part in code for word in ("import pickle", "pickle.", "eval(", "exec("))


# ---- the verifier -------------------------------------------------------------------------------------------

def small_graph():
    builder = GraphBuilder()
    x = builder.add_input("x", TensorType((2, 3), "float32"))
    w = builder.add_param("w", TensorType((3, 4), "float32"))
    y = builder.add_node("matmul", [x, w])
    z = builder.add_node("tanh", [y])
    s = builder.add_node("sum", [z], {"axes": (1,), "keepdims": False})
    return builder.finish([s, z])


def fresh():
    return graph_from_json(graph_to_json(small_graph()))


def test_valid_graphs_pass(train_step):
    assert verify(train_step[0].graph) is train_step[0].graph
    graph = small_graph()
    assert verify(graph) is graph


def break_order(g):
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]


def break_cycle(g):
    g.nodes[0].inputs = (g.nodes[1].output, g.nodes[0].inputs[1])


def break_redefinition(g):
    g.nodes[1].output.id = g.nodes[0].output.id


def break_arity(g):
    g.nodes[1].inputs = g.nodes[1].inputs * 2


def break_op(g):
    g.nodes[1].op = "frobnicate"


def break_attribute(g):
    del g.nodes[2].attrs["keepdims"]


def break_attribute_value(g):
    g.nodes[2].attrs["axes"] = (7,)


def break_type(g):
    g.nodes[1].output.type = TensorType((2, 5), "float32")


def break_output(g):
    g.outputs.append(GraphBuilder().add_input("stranger", TensorType((1,), "float32")))


def break_names(g):
    g.params[0].name = "x"


def break_foreign_value(g):
    g.nodes[1].inputs = (small_graph().nodes[0].output,)


def break_update(g):
    g.updates.append((g.params[0], g.nodes[1].output))


BREAKS = {
    break_order: "used before it is defined", break_cycle: "used before it is defined",
    break_redefinition: "redefines", break_arity: "takes 1 inputs, has 2", break_op: "unknown op 'frobnicate'",
    break_attribute: "missing \\['keepdims'\\]", break_attribute_value: "axes \\(7,\\) are not sorted unique",
    break_type: "recorded type f32\\[2,5\\] but the tanh rule infers f32\\[2,4\\]",
    break_output: "output %stranger is not defined", break_names: "the name 'x' is used twice",
    break_foreign_value: "used before it is defined", break_update: "has type f32\\[2,4\\], the parameter f32\\[3,4\\]",
}


@pytest.mark.parametrize("breaker", list(BREAKS), ids=[b.__name__ for b in BREAKS])
def test_verifier_rejects_broken_graphs(breaker):
    graph = fresh()
    breaker(graph)
    with pytest.raises(VerificationError, match=BREAKS[breaker]):
        verify(graph)


def test_verifier_reports_every_problem_at_once():
    graph = fresh()
    break_op(graph)
    break_output(graph)
    with pytest.raises(VerificationError, match="2 problem") as caught:
        verify(graph)
    assert "frobnicate" in str(caught.value) and "stranger" in str(caught.value)
