"""JSON save and load of graphs. Loading treats the file as hostile: nothing in it is executed (no pickle), only a
regular file of bounded size is read, the JSON is parsed strictly (ir/untrusted.py), every field is checked before
use, sizes are bounded, every malformed file gives a SerializationError, and the result must pass the verifier.

    save_graph(graph, "gpt.json"); same = load_graph("gpt.json")
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator, Union

from .builder import GraphBuilder
from .errors import GraphError, SerializationError, ShapeError
from .graph import ROLES, Graph, Provenance, Value
from .ops import get_op
from .types import TensorType
from .untrusted import parse_json, read_regular_file
from .verifier import verify

FORMAT_NAME = "graphgpt-graph"
FORMAT_VERSION = 2  # 2: provenance records the node's role
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_NODES = 1_000_000
MAX_VALUE_ELEMENTS = 1 << 40  # larger types cannot be meant: refuse before anything allocates for them


def _provenance_to_json(provenance: Provenance) -> dict[str, Any]:
    return {"module_path": provenance.module_path, "filename": provenance.filename, "lineno": provenance.lineno,
            "differentiates": provenance.differentiates, "role": provenance.role}


def graph_to_json(graph: Graph) -> dict[str, Any]:
    """A JSON-ready dict of the graph. Graph files hold concrete sizes: a symbolic graph (f32[B,T,64]) assumes
    guards its file would not carry, so it is saved specialised (passes/specialize.py)."""
    symbolic = next((value for value in graph.values() if value.type.is_symbolic), None)
    if symbolic is not None:
        raise SerializationError(f"value {symbolic!r} has symbolic sizes; graph files hold concrete ones: save "
                                 f"specialize_graph(graph, {{'B': ..., 'T': ...}}) (graphgpt.passes.specialize)")

    def declared(value: Value) -> dict[str, Any]:
        return {"id": value.id, "name": value.name, "type": str(value.type)}

    nodes = []
    for node in graph.nodes:
        kinds = get_op(node.op).attrs
        nodes.append({
            "id": node.output.id,
            "op": node.op,
            "inputs": [value.id for value in node.inputs],
            "attrs": {name: kinds[name].to_json(value) for name, value in node.attrs.items()},
            "type": str(node.output.type),
            "provenance": _provenance_to_json(node.provenance),
        })
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "header": graph.header,
        "inputs": [declared(value) for value in graph.inputs],
        "params": [declared(value) for value in graph.params],
        "nodes": nodes,
        "outputs": [value.id for value in graph.outputs],
        "updates": [[parameter.id, value.id] for parameter, value in graph.updates],
    }


def save_graph(graph: Graph, path: Union[str, os.PathLike]) -> None:
    """Write the graph as JSON, atomically (a temporary file renamed into place)."""
    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(graph_to_json(graph), file, indent=1, allow_nan=False)
    os.replace(temporary, path)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise SerializationError(message)


def _is_id(value: Any) -> bool:
    """An integer, not a bool (True == 1 would otherwise name value 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(record: Any, where: str, required: dict[str, Union[type, tuple[type, ...]]]) -> dict[str, Any]:
    _expect(isinstance(record, dict), f"{where}: expected an object, got {type(record).__name__}")
    _expect(set(record) == set(required), f"{where}: expected fields {sorted(required)}, got {sorted(record)}")
    for name, kind in required.items():
        value = record[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))  # bool is an int subclass
        _expect(ok, f"{where}: field {name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r:.80}")
    return record


@contextmanager
def _refusing(where: str) -> Iterator[None]:
    """Whatever a malformed record makes the builder, an op's rule or an attribute kind raise becomes a
    SerializationError saying where (a float attribute of 10**400 raises OverflowError, for one)."""
    try:
        yield
    except SerializationError:
        raise
    except (GraphError, ValueError, TypeError, ArithmeticError, LookupError) as error:
        raise SerializationError(f"{where}: {error}") from None


def _type(text: str, where: str) -> TensorType:
    try:
        result = TensorType.parse(text)
    except (ShapeError, ValueError) as error:
        raise SerializationError(f"{where}: bad type {text!r:.80}: {error}") from None
    _expect(not result.is_symbolic, f"{where}: type {text} has symbolic sizes; graph files hold concrete ones")
    # Only the spelling save_graph writes: int() would also take ' 2', '+2' and '1_0'.
    _expect(str(result) == text, f"{where}: bad type {text!r:.80}: expected it written as {result}")
    _expect(result.size <= MAX_VALUE_ELEMENTS, f"{where}: type {text} is absurdly large")
    return result


def graph_from_json(data: Any) -> Graph:
    """Rebuild and verify a graph from graph_to_json's form; SerializationError says what is wrong and where."""
    _fields(data, "graph", {"format": str, "version": int, "header": str, "inputs": list, "params": list,
                            "nodes": list, "outputs": list, "updates": list})
    _expect(data["format"] == FORMAT_NAME, f"not a graphgpt graph (format {data['format']!r:.80})")
    _expect(data["version"] == FORMAT_VERSION, f"graph format version {data['version']} is not supported "
                                               f"(this graphgpt reads version {FORMAT_VERSION})")
    _expect(len(data["nodes"]) <= MAX_NODES, f"graph has {len(data['nodes'])} nodes, more than {MAX_NODES}")
    builder = GraphBuilder(header=data["header"])
    by_id: dict[int, Value] = {}

    def remember(file_id: int, value: Value, where: str) -> None:
        _expect(file_id not in by_id, f"{where}: id {file_id} is defined twice")
        by_id[file_id] = value

    for kind, records in (("input", data["inputs"]), ("param", data["params"])):
        for index, record in enumerate(records):
            where = f"{kind} {index}"
            with _refusing(where):
                _fields(record, where, {"id": int, "name": str, "type": str})
                _expect(bool(record["name"]), f"{where}: needs a name")
                _expect(record["id"] >= 0, f"{where}: id {record['id']} is negative")
                add = builder.add_input if kind == "input" else builder.add_param
                remember(record["id"], add(record["name"], _type(record["type"], where), value_id=record["id"]),
                         where)
    for index, record in enumerate(data["nodes"]):
        where = f"node {index}"
        _fields(record, where, {"id": int, "op": str, "inputs": list, "attrs": dict, "type": str,
                                "provenance": dict})
        where = f"node {index} (id {record['id']}, op {record['op']!r:.40})"
        with _refusing(where):
            op_def = get_op(record["op"])
            inputs = []
            for file_id in record["inputs"]:
                _expect(_is_id(file_id) and file_id in by_id,
                        f"{where}: input {file_id!r:.40} is not defined earlier in the file (unknown id or a cycle)")
                inputs.append(by_id[file_id])
            unknown = sorted(set(record["attrs"]) - set(op_def.attrs))
            _expect(not unknown, f"{where}: unknown attributes {unknown}")
            attrs = {}
            for name, kind in op_def.attrs.items():
                _expect(name in record["attrs"], f"{where}: missing attribute {name!r}")
                with _refusing(f"{where}: attribute {name!r}"):
                    attrs[name] = kind.from_json(record["attrs"][name])
            source = _fields(record["provenance"], f"{where} provenance",
                             {"module_path": str, "filename": str, "lineno": int,
                              "differentiates": (int, type(None)), "role": str})
            _expect(source["role"] in ROLES, f"{where} provenance: role {source['role']!r:.40} is not one of {ROLES}")
            _expect(record["id"] >= 0, f"{where}: id {record['id']} is negative")
            _expect(record["id"] not in by_id, f"{where}: id {record['id']} is defined twice")
            value = builder.add_node(record["op"], inputs, attrs, Provenance(**source), value_id=record["id"])
            recorded = _type(record["type"], where)
            _expect(value.type == recorded, f"{where}: recorded type {recorded} but the rule infers {value.type}")
            remember(record["id"], value, where)
    outputs = []
    for file_id in data["outputs"]:
        _expect(_is_id(file_id) and file_id in by_id, f"output {file_id!r:.40} is not defined")
        outputs.append(by_id[file_id])
    updates = []
    for pair in data["updates"]:
        _expect(isinstance(pair, list) and len(pair) == 2 and all(_is_id(i) and i in by_id for i in pair),
                f"update {pair!r:.60} must be [parameter id, value id] of defined values")
        updates.append((by_id[pair[0]], by_id[pair[1]]))
    with _refusing("graph"):
        return verify(builder.finish(outputs, updates))


def load_graph(path: Union[str, os.PathLike]) -> Graph:
    """Read a graph written by save_graph, refusing anything malformed with a SerializationError: only a regular
    file of at most MAX_FILE_BYTES is read (a FIFO or /dev/zero is refused, not waited on or read forever)."""
    source = os.fspath(path)
    raw = read_regular_file(path, MAX_FILE_BYTES,
                            lambda reason: SerializationError(f"cannot read graph file {source!r}: {reason}"))
    return graph_from_text(raw, source=source)


def graph_from_text(text: Union[str, bytes], source: str = "<string>") -> Graph:
    """A graph from the JSON text save_graph writes; `source` names it in errors."""
    data = parse_json(text, lambda reason: SerializationError(f"{source}: {reason}"))
    try:
        return graph_from_json(data)
    except SerializationError as error:
        raise SerializationError(f"{source}: {error}") from None
