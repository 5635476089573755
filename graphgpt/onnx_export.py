"""graphgpt.export_onnx: write the graph a Compiled runs as an ONNX model of standard ops (opset 20), to run on
onnxruntime or open in Netron.

    fwd = graphgpt.compile(model, tokens)
    graphgpt.export_onnx(fwd, "gpt.onnx")
    session = onnxruntime.InferenceSession("gpt.onnx")
    logits, = session.run(None, {"tokens": tokens})      # equal to fwd(tokens)

What the file holds, from the whole optimised graph (`compiled.graph`) at concrete sizes:
- inputs: the graph's inputs under their names and dtypes (`tokens`, int64), then every parameter the graph
  updates (a KV cache; a training step's weights and optimizer state), under the parameter's name: state the
  caller passes in and takes back at each run;
- initializers: every other parameter and buffer the graph reads, named by module path
  (`blocks.0.attention.q_proj.weight`), holding its value at export;
- outputs: the results (`output`, or `output0`, `output1`, ...; a training step's `loss`; or `output_names=`),
  then a training step's gradients (`grad.<parameter>`), then each updated parameter's new value as
  `<parameter>.next` (also listed in the model's metadata, `graphgpt.updates`, as [input, output] pairs);
- nodes: each graphgpt node as one ONNX node or a few (graphgpt/onnx_ops.py), named `<module path>/<op>_<id>`
  (`blocks.0.attention.q_proj/matmul_112`; the result keeps that name), the nodes of a decomposition
  `<that name>/<ONNX op>_<k>`, each with the graphgpt node and its source line as doc_string, so Netron shows
  where every node came from. Fused elementwise programs are written out instruction by instruction.

A node whose op has no ONNX mapping is refused before anything is written, naming the op and the node; the file
is written atomically (never a partial file), after onnx.checker passes on the model.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from graphgpt.ir import Graph, GraphError, TensorType
from graphgpt.ir.graph import Node
from graphgpt.passes.specialize import describe_sizes, specialize_graph, symbols_of

from . import __version__
from .compiler import Compiled
from .lazy import LazyCompiled
from .onnx_ops import MAPPINGS, Application
from .training.atomic_file import atomic_file

# Opset 20 is the first with Gelu, which computes graphgpt's GELU (the tanh approximation) as one node; since 18
# every Reduce* takes its axes as an input. onnx 1.15 and onnxruntime 1.17, the extra's lower bounds, are the
# first releases to run it.
OPSET = 20
INSTALL_HINT = "pip install -e '.[onnx]'"
# Protobuf cannot serialise a message of 2 GiB or more, so the weights must stay below it (no external data yet).
PROTOBUF_LIMIT = (1 << 31) - 1


class ExportError(GraphError, ValueError):
    """A compiled graph that cannot be written as ONNX (an op without a mapping, sizes that do not fit), said in
    one line naming what and where."""


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401  (a submodule `import onnx` does not load)
    except ImportError as error:
        raise ImportError(f"graphgpt.export_onnx needs the onnx package, an optional extra: {INSTALL_HINT} "
                          f"({error})") from None
    return onnx


def node_name(node: Node) -> str:
    """'blocks.0.attention.q_proj/matmul_112': the module path that made the node, its op and value id."""
    path = node.provenance.module_path
    return f"{path}/{node.op}_{node.id}" if path else f"{node.op}_{node.id}"


def node_doc(node: Node) -> str:
    """'%112 = matmul at blocks.0.attention.q_proj  layers.py:26', plus its role when not forward."""
    provenance = node.provenance
    text = f"{node.output.label} = {node.op} at {provenance.module_path or '<top level>'}"
    if provenance.source:
        text += f"  {provenance.source}"
    if provenance.role != "forward":
        differentiates = f" of %{provenance.differentiates}" if provenance.differentiates is not None else ""
        text += f"  ({provenance.role}{differentiates})"
    return text


class NodeEmitter:
    """Writes the ONNX nodes of one graphgpt node (what an onnx_ops mapping calls): nodes and constants are named
    `<node name>/<what>_<k>`; `finish` gives the result the node's own name."""

    def __init__(self, onnx, base: str, doc: str):
        self._onnx = onnx
        self.base = base
        self.doc = doc
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _fresh(self, what: str) -> str:
        self._count += 1
        return f"{self.base}/{what}_{self._count}"

    def op(self, onnx_op: str, inputs: Sequence[str], **attributes) -> str:
        """One ONNX node over `inputs`; an ndarray attribute becomes a tensor (Constant's value)."""
        name = self._fresh(onnx_op)
        attributes = {key: self._onnx.numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value
                      for key, value in attributes.items()}
        self.nodes.append(self._onnx.helper.make_node(onnx_op, list(inputs), [name], name=name,
                                                      doc_string=self.doc, **attributes))
        return name

    def array(self, values: np.ndarray, what: str) -> str:
        """A constant input of a decomposition, as an initializer named after the node."""
        name = self._fresh(what)
        self.initializers.append(self._onnx.numpy_helper.from_array(np.asarray(values), name))
        return name

    def ints(self, values: Sequence[int], what: str) -> str:
        """A 1-D int64 input: a shape, axes, pads."""
        return self.array(np.array([int(value) for value in values], np.int64), what)

    def scalar(self, value: float, dtype: str) -> str:
        return self.array(np.asarray(value, dtype), "scalar")

    def dtype(self, name: str) -> int:
        """The ONNX element type of a graphgpt dtype."""
        return self._onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))

    def apply(self, op: str, inputs: Sequence[str], input_types: Sequence[TensorType], output_type: TensorType,
              attrs: dict) -> str:
        """The ONNX name of op(inputs), written by the op's mapping."""
        return MAPPINGS[op](self, Application(op, list(inputs), list(input_types), output_type, attrs))

    def finish(self, result: str, target: str) -> None:
        """Rename the result to `target` (and its node to the graphgpt node's name), or copy an input there."""
        producer = next((node for node in reversed(self.nodes) if result in node.output), None)
        if producer is None:  # the op maps to nothing (a slice taking everything): name its input anew
            self.nodes.append(self._onnx.helper.make_node("Identity", [result], [target], name=self.base,
                                                          doc_string=self.doc))
            return
        for node in self.nodes:
            for position, name in enumerate(node.input):
                if name == result:
                    node.input[position] = target
        producer.output[list(producer.output).index(result)] = target
        producer.name = self.base


def export_onnx(compiled: Union[Compiled, LazyCompiled], path: str, *,
                sizes: Optional[Mapping[str, int]] = None, output_names: Optional[Sequence[str]] = None):
    """Write the graph `compiled` runs to `path` as an ONNX model (see the module docstring for its inputs,
    initializers, outputs and names) and return the onnx.ModelProto.

    `compiled` is a Compiled, or a LazyCompiled that has run (its latest entry is written). A graph traced with
    symbolic sizes is written at concrete ones: `sizes` ({'B': 2, 'T': 16}), else those of its latest run (or
    of the example it was traced at). `output_names` names the results (default `output`, `output0`, ...; a
    training step's `loss`). Needs the optional extra: pip install -e '.[onnx]'."""
    onnx = _import_onnx()
    compiled = _compiled_of(compiled)
    graph = _concrete_graph(compiled, sizes)
    _refuse_unmapped(graph)
    arrays = compiled.parameter_values()
    model = _build_model(onnx, compiled, graph, arrays, output_names)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"the ONNX model made from the compiled graph fails onnx.checker ({first_line}); "
                          f"nothing was written to {path}") from error
    with atomic_file(path, "wb") as file:
        file.write(model.SerializeToString())
    return model


def _compiled_of(compiled) -> Compiled:
    if isinstance(compiled, LazyCompiled):
        try:
            return compiled.latest
        except RuntimeError:
            raise ExportError("export_onnx: the lazily compiled model has not compiled anything yet; call it with "
                              "inputs once (the entry it ran last is exported)") from None
    if not isinstance(compiled, Compiled):
        raise TypeError(f"export_onnx takes what graphgpt.compile returns, got {type(compiled).__name__}")
    return compiled


def _concrete_graph(compiled: Compiled, sizes: Optional[Mapping[str, int]]) -> Graph:
    """The whole optimised graph, specialised to concrete sizes if it was traced with symbolic ones."""
    graph = compiled.graph
    if not compiled.program.symbolic:
        if sizes:
            raise ExportError(f"export_onnx: sizes={dict(sizes)} is for a graph traced with symbolic sizes; this one "
                              f"is static ({_signature(graph)})")
        return graph
    symbols = symbols_of([*graph.inputs, *graph.params])
    if sizes is None:
        sizes = compiled.specializations.latest_sizes(compiled.shape_env.hints)
    sizes = dict(sizes)
    if sorted(sizes) != sorted(symbols) or not all(isinstance(size, int) and size >= 1 for size in sizes.values()):
        raise ExportError(f"export_onnx: the graph has symbolic sizes {', '.join(symbols)} ({_signature(graph)}); "
                          f"sizes= must give each a positive integer, got {sizes}")
    failing = compiled.shape_env.failing_guard(sizes) if compiled.shape_env else None
    if failing is not None:
        raise ExportError(f"export_onnx: guard {failing} fails at {describe_sizes(sizes)}: the symbolic trace "
                          f"assumed it")
    return specialize_graph(graph, sizes)


def _signature(graph: Graph) -> str:
    return ", ".join(f"{value.name}: {value.type}" for value in graph.inputs)


def _refuse_unmapped(graph: Graph) -> None:
    """Every op the graph uses (a fused program's instructions included) has a mapping, or one line naming it."""
    for node in graph.nodes:
        program = node.attrs["program"] if node.op == "fused_elementwise" else ()
        ops = [node.op] + [op for op, _ in program]
        for op in ops:
            if op not in MAPPINGS:
                inside = "" if op == node.op else " in its fused program"
                raise ExportError(f"export_onnx: op {op!r} has no ONNX mapping: {node.describe()} uses it{inside} "
                                  f"(ops with one: graphgpt/onnx_ops.py); nothing was written")


def _result_names(compiled: Compiled, graph: Graph, output_names: Optional[Sequence[str]]) -> list[str]:
    gradients = [f"grad.{name}" for name in compiled.gradient_names]
    count = len(graph.outputs) - len(gradients)
    if output_names is not None:
        if len(output_names) != count:
            raise ExportError(f"export_onnx: output_names names {len(output_names)} result(s), the graph returns "
                              f"{count}")
        results = list(output_names)
    elif gradients and count == 1:
        results = ["loss"]
    else:
        results = ["output"] if count == 1 else [f"output{index}" for index in range(count)]
    return results + gradients + [f"{parameter.name}.next" for parameter, _ in graph.updates]


def _build_model(onnx, compiled: Compiled, graph: Graph, arrays: dict[str, np.ndarray],
                 output_names: Optional[Sequence[str]]):
    helper = onnx.helper
    results = graph.results()  # outputs, then the updates' new values
    result_names = _result_names(compiled, graph, output_names)
    updated = {parameter.id for parameter, _ in graph.updates}
    every_name = [value.name for value in (*graph.inputs, *graph.params)] + result_names
    clashes = sorted({name for name in every_name if every_name.count(name) > 1})
    if clashes:
        raise ExportError(f"export_onnx: the name(s) {clashes} would name two inputs or outputs; choose others "
                          f"with output_names=")
    read = {value.id for node in graph.nodes for value in node.inputs} | {value.id for value in results}
    initializers = [value for value in graph.params if value.id in read and value.id not in updated]
    weight_bytes = sum(arrays[value.name].nbytes for value in initializers)
    if weight_bytes > PROTOBUF_LIMIT:
        raise ExportError(f"export_onnx: the weights take {weight_bytes} bytes, past protobuf's 2 GiB limit for "
                          f"one ONNX file (external data is not supported yet)")

    # The ONNX name of every value; a node's result that is a graph result takes the result's name directly.
    names = {value.id: value.name for value in (*graph.inputs, *graph.params)}
    names.update((node.output.id, node_name(node)) for node in graph.nodes)
    copies = []  # (value, result name) given by an Identity: an input or parameter returned, or a value twice
    named_results = set()
    for value, name in zip(results, result_names):
        if value.kind == "node" and value.id not in named_results:
            names[value.id] = name
            named_results.add(value.id)
        else:
            copies.append((value, name))

    nodes, constants = [], []
    for node in graph.nodes:
        emitter = NodeEmitter(onnx, node_name(node), node_doc(node))
        result = emitter.apply(node.op, [names[value.id] for value in node.inputs],
                               [value.type for value in node.inputs], node.output.type, node.attrs)
        emitter.finish(result, names[node.output.id])
        nodes += emitter.nodes
        constants += emitter.initializers
    for value, name in copies:
        nodes.append(helper.make_node("Identity", [names[value.id]], [name], name=f"{name}/Identity"))

    def info(name: str, type: TensorType):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(type.numpy_dtype),
                                             [int(size) for size in type.shape])

    onnx_graph = helper.make_graph(
        nodes, graph.header,
        inputs=[info(value.name, value.type) for value in graph.inputs]
        + [info(parameter.name, parameter.type) for parameter, _ in graph.updates],
        outputs=[info(name, value.type) for value, name in zip(results, result_names)],
        initializer=[onnx.numpy_helper.from_array(arrays[value.name], value.name) for value in initializers]
        + constants,
        value_info=[info(names[node.output.id], node.output.type) for node in graph.nodes
                    if node.output.id not in named_results])
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphgpt",
                              producer_version=__version__,
                              doc_string=f"graphgpt {compiled.program.whole.name}: {_signature(graph)}")
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(model, {"graphgpt.updates": json.dumps(
        [[parameter.name, f"{parameter.name}.next"] for parameter, _ in graph.updates])})
    return model
