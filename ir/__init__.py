"""graphgpt.ir: the graph language. Types, SSA values and nodes, the op registry, the op-building API, the graph
builder, the text printer, the verifier and JSON (de)serialisation. Knows nothing of graphgpt's user-facing layer."""

from .builder import GraphBuilder
from .errors import GraphError, SerializationError, ShapeError, VerificationError
from .graph import Graph, Node, Provenance, Value
from .ops import OPS, OpDef, OpKind, define_op, get_op
from .printer import format_graph, format_node
from .serialize import graph_from_json, graph_to_json, load_graph, save_graph
from .tensor_ops import TensorOps
from .types import TensorType
from .verifier import verify

__all__ = [
    "Graph", "GraphBuilder", "GraphError", "Node", "OPS", "OpDef", "OpKind", "Provenance", "SerializationError",
    "ShapeError", "TensorOps", "TensorType", "Value", "VerificationError", "define_op", "format_graph",
    "format_node", "get_op", "graph_from_json", "graph_to_json", "load_graph", "save_graph", "verify",
]
