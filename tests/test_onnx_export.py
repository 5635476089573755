"""graphgpt.export_onnx: every mapped op, a GPT's forward and training step, and a graph with updates, written as
ONNX, checked by onnx.checker and run on onnxruntime against graphgpt's own executor; unmapped ops refused.

Agreement is within 1e-5 relative to the scale of each output (its largest magnitude): onnxruntime's kernels
(MLAS GEMMs, its tanh, its reductions) add in other orders than NumPy and OpenBLAS, and an element near zero is a
difference of terms of the output's scale, so its rounding is relative to that scale, not to itself."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is an optional extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra: pip install -e '.[onnx]'")

import graphgpt  # noqa: E402
from graphgpt.compiler import Compiled  # noqa: E402
from graphgpt.guards import BindingGuard  # noqa: E402
from graphgpt.ir import GraphBuilder, Provenance, TensorType  # noqa: E402
from graphgpt.nn import functional as F  # noqa: E402
from graphgpt.onnx_export import ExportError  # noqa: E402
from graphgpt.onnx_ops import MAPPINGS  # noqa: E402
from graphgpt.passes.elementwise_fusion import fuse_elementwise  # noqa: E402
from graphgpt.passes.manager import DEFAULT_PIPELINE  # noqa: E402
from graphgpt.passes.program_build import build_forward_program  # noqa: E402
from graphgpt.tensor import Tensor  # noqa: E402

RTOL = 1e-5


def scale_of(array: np.ndarray) -> float:
    """The largest finite magnitude (infinities must match exactly)."""
    return float(np.max(np.abs(array[np.isfinite(array)]), initial=0.0))


def assert_agrees(actual: np.ndarray, expected: np.ndarray, what: str = "", at_least: float = 0.0) -> None:
    """Equal dtype and shape; integers and bools exactly, floats within RTOL of the output's scale (or of
    `at_least`, the scale of the values it was computed from, where that is larger)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if expected.dtype.kind in "biu":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        scale = max(scale_of(expected), at_least)
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def run_onnx(path: str, feeds: dict) -> dict[str, np.ndarray]:
    """Check the file as the issue asks (full check: shape inference too), then run it on onnxruntime's CPU."""
    onnx.checker.check_model(path, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


# ---- every mapped op, each alone in a small graph -------------------------------------------------------------

def normal(*shape):
    return ("normal", TensorType(shape, "float32"))


def positive(*shape):
    return ("positive", TensorType(shape, "float32"))


def few(*shape):  # values from {-1, 0, 1}: comparisons see ties
    return ("few", TensorType(shape, "float32"))


def indices(high, *shape):
    return (("indices", high), TensorType(shape, "int64"))


def flags(*shape):
    return ("flags", TensorType(shape, "bool"))


def example(kind, type: TensorType, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":  # asarray: a 0-d draw is a NumPy scalar, which onnxruntime does not take as a feed
        return np.asarray(rng.standard_normal(type.shape) * 2).astype(type.numpy_dtype)
    if kind == "positive":
        return rng.uniform(0.1, 3.0, type.shape).astype(type.numpy_dtype)
    if kind == "few":
        return rng.integers(-1, 2, type.shape).astype(type.numpy_dtype)
    if kind == "flags":
        return rng.random(type.shape) < 0.5
    return rng.integers(0, kind[1], type.shape).astype(type.numpy_dtype)


# A program using every fusible op: (op, operand numbers); inputs are 0 and 1, results numbered on from 2.
EVERY_FUSIBLE_OP = (("mul", (0, 1)), ("sqrt", (2,)), ("log", (3,)), ("tanh", (4,)), ("exp", (5,)), ("pow", (0, 6)),
                    ("div", (7, 1)), ("sub", (8, 0)), ("neg", (9,)), ("maximum", (10, 4)), ("add", (11, 2)))

# case id -> (op, inputs, attributes): at least one case per mapped op (checked below).
OP_CASES = {
    **{op: (op, [normal(3, 4)], {}) for op in ("neg", "exp", "tanh", "relu", "sigmoid", "gelu")},
    **{op: (op, [positive(3, 4)], {}) for op in ("log", "sqrt")},
    **{op: (op, [normal(2, 3, 4), normal(3, 1)], {}) for op in ("add", "sub", "mul", "div", "maximum")},
    "pow": ("pow", [positive(3, 4), normal(4)], {}),
    **{op: (op, [few(3, 4), few(4)], {})
       for op in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal")},
    "where": ("where", [flags(3, 4), normal(3, 4), normal(4)], {}),
    "cast to int64": ("cast", [normal(3, 4)], {"dtype": "int64"}),
    "cast to float32": ("cast", [indices(9, 3, 4)], {"dtype": "float32"}),
    "matmul": ("matmul", [normal(2, 3, 4), normal(4, 5)], {}),
    "matmul int64": ("matmul", [indices(5, 3, 4), indices(5, 4, 2)], {}),
    "embedding": ("embedding", [normal(10, 4), indices(10, 2, 3)], {}),
    "sum": ("sum", [normal(2, 3, 4)], {"axes": (0, 2), "keepdims": False}),
    "sum over no axis": ("sum", [normal(2, 3)], {"axes": (), "keepdims": False}),
    "mean": ("mean", [normal(2, 3, 4)], {"axes": (1,), "keepdims": True}),
    "max": ("max", [normal(2, 3, 4)], {"axes": (2,), "keepdims": False}),
    "softmax": ("softmax", [normal(2, 5)], {"axis": 1}),
    "log_softmax": ("log_softmax", [normal(4, 5)], {"axis": 0}),
    "layer_norm": ("layer_norm", [normal(2, 3, 8), normal(8), normal(8)], {"eps": 1e-5}),
    "cross_entropy": ("cross_entropy", [normal(2, 3, 7), indices(7, 2, 3)], {}),
    "reshape": ("reshape", [normal(2, 3, 4)], {"shape": (6, 4)}),
    "transpose": ("transpose", [normal(2, 3, 4)], {"perm": (2, 0, 1)}),
    "matmul_permuted": ("matmul_permuted", [normal(2, 3, 4, 5), normal(2, 3, 5, 6)], {"perm": (0, 2, 1, 3)}),
    "broadcast_to": ("broadcast_to", [normal(3, 1)], {"shape": (2, 3, 4)}),
    "slice": ("slice", [normal(4, 6)], {"slices": ((1, 3, 1), (0, 6, 2))}),
    "slice of everything": ("slice", [normal(4, 6)], {"slices": ((0, 4, 1), (0, 6, 1))}),
    "unslice": ("unslice", [normal(2, 3)], {"slices": ((1, 3, 1), (0, 5, 2)), "shape": (4, 5)}),
    "unslice strided": ("unslice", [normal(2, 2, 1)],
                        {"slices": ((0, 6, 3), (1, 7, 4), (2, 3, 1)), "shape": (6, 7, 3)}),
    "cache_write": ("cache_write", [normal(2, 3, 6, 4), normal(2, 3, 2, 4), indices(5, 2)], {}),
    "concat": ("concat", [normal(2, 3), normal(2, 4), normal(2, 1)], {"axis": 1}),
    "scatter_add": ("scatter_add", [normal(2, 3, 4), indices(5, 2, 3)], {"num_rows": 5}),
    "one_hot": ("one_hot", [indices(6, 2, 3)], {"num_classes": 6, "dtype": "float32"}),
    "constant": ("constant", [], {"value": np.array([[1.5, -np.inf], [0.0, 2.0]], np.float32)}),
    "reciprocal_size": ("reciprocal_size", [], {"size": 7, "dtype": "float32"}),
    "fused_elementwise": ("fused_elementwise", [positive(3, 4), positive(4)], {"program": EVERY_FUSIBLE_OP}),
    "gelu_grad": ("gelu_grad", [normal(3, 8), normal(3, 8)], {}),
    "softmax_grad": ("softmax_grad", [normal(2, 3, 5), positive(2, 3, 5)], {"axis": 1}),
    "cross_entropy_grad": ("cross_entropy_grad", [normal(), normal(2, 3, 6), indices(6, 2, 3)], {}),
    "layer_norm_grad": ("layer_norm_grad", [normal(2, 3, 8), normal(2, 3, 8), normal(8)], {"eps": 1e-5}),
    "layer_norm_gamma_grad": ("layer_norm_gamma_grad", [normal(2, 3, 8), normal(2, 3, 8)], {"eps": 1e-5}),
    "attention": ("attention", [normal(2, 3, 5, 4), normal(2, 3, 6, 4), normal(2, 3, 6, 2), normal(5, 6)],
                  {"scale": 0.5}),
    "attention_grad": ("attention_grad", [normal(2, 5, 4)] * 3 + [normal(5, 5)] + [normal(2, 5, 4)] * 2,
                       {"scale": 0.5}),
}


def compiled_graph(build, params: dict[str, np.ndarray] = None) -> Compiled:
    """A Compiled running the graph `build(builder)` makes (graphgpt's executor: no passes), its parameters bound
    to Tensors of `params`."""
    builder = GraphBuilder()
    outputs, updates = build(builder)
    program = build_forward_program(builder.finish(outputs, updates), passes=[])
    bindings = {name: Tensor(array, dtype=array.dtype.name) for name, array in (params or {}).items()}
    return Compiled(program, bindings, returns_tuple=len(outputs) > 1, guard=BindingGuard(None, list(bindings)))


def test_every_mapped_op_has_a_case():
    assert {op for op, _, _ in OP_CASES.values()} == set(MAPPINGS)


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_runs_on_onnxruntime_as_in_graphgpt(case, tmp_path):
    op, inputs, attrs = OP_CASES[case]
    rng = np.random.default_rng(sorted(OP_CASES).index(case))
    arrays = [example(kind, type, rng) for kind, type in inputs]

    def build(builder):
        values = [builder.add_input(f"x{position}", type) for position, (_, type) in enumerate(inputs)]
        return [builder.add_node(op, values, attrs)], []

    compiled = compiled_graph(build)
    path = str(tmp_path / "op.onnx")
    graphgpt.export_onnx(compiled, path)
    results = run_onnx(path, {f"x{position}": array for position, array in enumerate(arrays)})
    assert_agrees(results["output"], compiled.run(*arrays), case)


# ---- the GPT -----------------------------------------------------------------------------------------------------

def small_gpt():
    graphgpt.manual_seed(0)
    return graphgpt.nn.GPT(vocab_size=65, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=16)


TOKENS = np.random.default_rng(1).integers(0, 65, size=(2, 12))


def fuse_every_chain(graph):
    """fuse_elementwise at every size (by default it leaves arrays as small as these unfused: slower fused)."""
    return fuse_elementwise(graph, min_elements=0)


FUSING = {"passes": [*DEFAULT_PIPELINE, "fuse_horizontal_matmuls", fuse_every_chain], "fast_math": {"reassociate"}}


@pytest.mark.parametrize("options", [{}, FUSING], ids=["default passes", "fused"])
def test_gpt_forward_exports_with_module_names_and_agrees(options, tmp_path):
    model = small_gpt()
    compiled = graphgpt.compile(model, TOKENS, **options)
    if options:  # the graph holds what the export must expand: fused programs, joined q/k/v projections
        assert {"fused_elementwise", "concat"} <= set(compiled.graph.op_counts())
    path = str(tmp_path / "gpt.onnx")
    model_proto = graphgpt.export_onnx(compiled, path, output_names=["logits"])
    results = run_onnx(path, {"tokens": TOKENS})
    assert_agrees(results["logits"], compiled.run(TOKENS))
    assert_agrees(results["logits"], model(Tensor(TOKENS)).data)

    graph = model_proto.graph
    assert [(value.name, value.type.tensor_type.elem_type) for value in graph.input] == [
        ("tokens", onnx.TensorProto.INT64)]
    parameter_names = {name for name, _ in [*model.named_parameters(), *model.named_buffers()]}
    assert parameter_names == {initializer.name for initializer in graph.initializer} & parameter_names
    assert "blocks.0.attention.q_proj.weight" in parameter_names
    matmuls = [node for node in graph.node if node.name.startswith("blocks.1.mlp.linear1/matmul_")]
    assert matmuls and all("layers.py:" in node.doc_string for node in matmuls)
    assert all(node.name for node in graph.node) and len({node.name for node in graph.node}) == len(graph.node)
    assert model_proto.opset_import[0].version >= 17


def test_training_step_exports_gradients_and_updates_as_input_output_pairs(tmp_path):
    model = small_gpt()
    lr = 0.1
    step = graphgpt.compile(model, TOKENS, TOKENS, loss=F.cross_entropy, optimizer=graphgpt.optim.SGD(lr=lr))
    path = str(tmp_path / "step.onnx")
    model_proto = graphgpt.export_onnx(step, path)
    updated = [parameter.name for parameter, _ in step.graph.updates]
    assert updated and {value.name for value in model_proto.graph.input} == {"tokens", "targets", *updated}
    assert not {initializer.name for initializer in model_proto.graph.initializer} & set(updated)
    metadata = {prop.key: prop.value for prop in model_proto.metadata_props}
    assert json.loads(metadata["graphgpt.updates"]) == [[name, f"{name}.next"] for name in updated]

    state = {name: step.bindings[name].data.copy() for name in updated}
    results = run_onnx(path, {"tokens": TOKENS, "targets": TOKENS, **state})
    loss = step.run(TOKENS, TOKENS)
    assert_agrees(results["loss"], loss)
    # A gradient that is zero but for rounding (the key projection's bias: softmax ignores a constant added to
    # every score of a row) has no scale of its own: gradients are compared at the scale of the largest, and the
    # parameters SGD moved at the scale of the largest step, lr times that.
    largest = max(scale_of(gradient) for gradient in step.grads.values())
    for name, gradient in step.grads.items():
        assert_agrees(results[f"grad.{name}"], gradient, name, at_least=largest)
    for name in updated:
        assert_agrees(results[f"{name}.next"], step.bindings[name].data, name, at_least=lr * largest)


def test_graph_updates_become_inputs_and_next_outputs(tmp_path):
    """A hand-made graph with state: the running total is read, added to and written back at each run."""
    state = np.arange(6, dtype=np.float32).reshape(2, 3)

    def build(builder):
        x = builder.add_input("x", TensorType((2, 3), "float32"))
        total = builder.add_param("state.total", TensorType((2, 3), "float32"))
        scale = builder.add_param("scale", TensorType((3,), "float32"))
        new_total = builder.add_node("add", [total, builder.add_node("mul", [x, scale])])
        return [builder.add_node("exp", [new_total])], [(total, new_total)]

    compiled = compiled_graph(build, {"state.total": state.copy(), "scale": np.float32([1, 2, 3])})
    path = str(tmp_path / "state.onnx")
    model_proto = graphgpt.export_onnx(compiled, path)
    assert [value.name for value in model_proto.graph.input] == ["x", "state.total"]
    assert [value.name for value in model_proto.graph.output] == ["output", "state.total.next"]
    assert [initializer.name for initializer in model_proto.graph.initializer] == ["scale"]
    x = np.ones((2, 3), np.float32)
    results = run_onnx(path, {"x": x, "state.total": state})
    assert_agrees(results["output"], compiled.run(x))
    assert_agrees(results["state.total.next"], compiled.bindings["state.total"].data)


def test_decode_graph_exports_with_its_cache_as_inputs_and_outputs(tmp_path):
    """Prefill then two decode steps on onnxruntime, each step's cache fed from the previous step's `.next`
    outputs, against graphgpt's compiled generation doing the same (sequences at different positions)."""
    gen = graphgpt.compile_generation(small_gpt(), batch=2)
    cache_names = [name for name, _ in gen.cache.named_tensors()]
    paths = {name: str(tmp_path / f"{name}.onnx") for name in ("prefill", "decode")}
    for name, path in paths.items():
        model_proto = graphgpt.export_onnx(getattr(gen, name), path)
        assert [value.name for value in model_proto.graph.input] == ["tokens", "positions", *cache_names]
        assert [value.name for value in model_proto.graph.output][1:] == [f"{name}.next" for name in cache_names]
    cache = {name: gen.prefill.bindings[name].data.copy() for name in cache_names}  # zeros
    prompt = np.zeros((2, gen.window), np.int64)
    prompt[:, :6] = TOKENS[:, :6]
    steps = [("prefill", prompt, np.zeros(2, np.int64)),
             ("decode", TOKENS[:, 6:7], np.array([6, 4])), ("decode", TOKENS[:, 7:8], np.array([7, 5]))]
    for name, tokens, positions in steps:
        compiled = getattr(gen, name)
        results = run_onnx(paths[name], {"tokens": tokens, "positions": positions, **cache})
        expected = compiled.run(tokens, positions)
        assert_agrees(results["output"], expected[0] if isinstance(expected, tuple) else expected, name)
        cache = {name: results[f"{name}.next"] for name in cache_names}
        for cache_name in cache_names:
            assert_agrees(cache[cache_name], compiled.bindings[cache_name].data, cache_name)


# ---- symbolic and lazy compiles -------------------------------------------------------------------------------

def test_a_symbolic_compile_exports_at_its_latest_sizes_or_those_given(tmp_path):
    model = small_gpt()
    lazy = graphgpt.compile(model, dynamic=True)
    with pytest.raises(ExportError, match="has not compiled anything yet"):
        graphgpt.export_onnx(lazy, str(tmp_path / "none.onnx"))
    lazy(TOKENS[:, :5])
    shorter = TOKENS[:1, :7]
    lazy(shorter)
    path = str(tmp_path / "latest.onnx")
    graphgpt.export_onnx(lazy, path)  # at the latest run's sizes, B=1, T=7
    assert_agrees(run_onnx(path, {"tokens": shorter})["output"], lazy(shorter))

    graphgpt.export_onnx(lazy, path, sizes={"B": 2, "T": 12})
    assert_agrees(run_onnx(path, {"tokens": TOKENS})["output"], lazy(TOKENS))
    with pytest.raises(ExportError, match=r"guard T <= 16 .* fails at B=1, T=17"):
        graphgpt.export_onnx(lazy, path, sizes={"B": 1, "T": 17})
    with pytest.raises(ExportError, match="sizes= must give each"):
        graphgpt.export_onnx(lazy, path, sizes={"B": 1})


# ---- refusals --------------------------------------------------------------------------------------------------

DROPOUT_PLACE = Provenance(module_path="blocks.0.dropout", filename="/src/dropout.py", lineno=42)


def masked(builder):
    x = builder.add_input("x", TensorType((2, 3), "float32"))
    key = builder.add_param("dropout.key", TensorType((), "int64"))
    mask = builder.add_node("dropout_mask", [key], {"shape": (2, 3), "p": 0.5, "dtype": "float32"}, DROPOUT_PLACE)
    return [builder.add_node("mul", [x, mask])], []


def test_an_op_without_a_mapping_is_refused_naming_it_and_its_node(tmp_path):
    compiled = compiled_graph(masked, {"dropout.key": np.asarray(3, np.int64)})
    path = tmp_path / "refused.onnx"
    with pytest.raises(ExportError) as caught:
        graphgpt.export_onnx(compiled, str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert "'dropout_mask' has no ONNX mapping" in message
    assert "(dropout_mask) at blocks.0.dropout (/src/dropout.py:42)" in message
    assert not path.exists() and not os.listdir(tmp_path)


def test_an_unmapped_instruction_of_a_fused_program_is_refused(tmp_path, monkeypatch):
    monkeypatch.delitem(MAPPINGS, "tanh")
    op, inputs, attrs = OP_CASES["fused_elementwise"]

    def build(builder):
        values = [builder.add_input(f"x{position}", type) for position, (_, type) in enumerate(inputs)]
        return [builder.add_node(op, values, attrs, DROPOUT_PLACE)], []

    with pytest.raises(ExportError, match=r"op 'tanh' has no ONNX mapping: node %\d+ \(fused_elementwise\) at "
                                          r"blocks.0.dropout .* uses it in its fused program"):
        graphgpt.export_onnx(compiled_graph(build), str(tmp_path / "fused.onnx"))


def test_without_onnx_the_export_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
        graphgpt.export_onnx(compiled_graph(masked, {"dropout.key": np.asarray(3, np.int64)}),
                             str(tmp_path / "x.onnx"))
