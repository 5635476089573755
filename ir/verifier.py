"""The verifier: checks that a graph keeps every invariant of the IR, as JAX's autodidax `typecheck_jaxpr` does.

Checked: each value defined once; every use after its definition (so the node list is a topological order and
there are no cycles); known ops with the right arity and well-formed attributes; each node's recorded type equal to
what its op's rule infers; unique names; outputs defined; each update writes a defined value of the right type
into a parameter, once. All problems are collected and reported together.
"""

from __future__ import annotations

from .errors import ShapeError, VerificationError
from .graph import Graph
from .ops import OPS


def verify(graph: Graph) -> Graph:
    """Return the graph unchanged, or raise VerificationError listing every broken invariant.

    >>> verify(compiled.graph)  # doctest: +SKIP
    """
    problems: list[str] = []
    defined: dict[int, str] = {}
    definitions: dict[int, object] = {}  # id -> the Value object defined: a use must be that very object
    names: set[str] = set()

    def is_defined(value) -> bool:
        return definitions.get(value.id) is value

    def define(value, what: str) -> None:
        if value.id in defined:
            problems.append(f"{what} redefines {value.label} (already defined by {defined[value.id]})")
        defined[value.id] = what
        definitions[value.id] = value
        if value.name:
            if value.name in names:
                problems.append(f"{what}: the name {value.name!r} is used twice")
            names.add(value.name)

    for value in graph.inputs:
        if value.kind != "input":
            problems.append(f"input {value.label} has kind {value.kind!r}")
        define(value, f"input {value.label}")
    for value in graph.params:
        if value.kind != "param" or not value.name:
            problems.append(f"parameter {value.label} must be a named value of kind 'param'")
        define(value, f"parameter {value.label}")

    for node in graph.nodes:
        where = node.describe()
        for position, value in enumerate(node.inputs):
            if not is_defined(value):
                problems.append(f"{where}: input {position} ({value.label}) is used before it is defined "
                                f"(not a topological order, a cycle, or a value from another graph)")
        op_def = OPS.get(node.op)
        if op_def is None:
            problems.append(f"{where}: unknown op {node.op!r}")
        elif not op_def.accepts(len(node.inputs)):
            problems.append(f"{where}: {node.op} takes {op_def.arity_text} inputs, has {len(node.inputs)}")
        else:
            try:
                attrs = op_def.check_attrs(node.attrs)
                inferred = op_def.infer_type([value.type for value in node.inputs], attrs)
                if not inferred.same_as(node.output.type):
                    problems.append(f"{where}: recorded type {node.output.type} but the {node.op} rule "
                                    f"infers {inferred}")
            except ShapeError as error:
                problems.append(f"{where}: {error}")
        if node.output.producer is not node or node.output.kind != "node":
            problems.append(f"{where}: its output value does not point back to it")
        define(node.output, where)

    for value in graph.outputs:
        if not is_defined(value):
            problems.append(f"output {value.label} is not defined in the graph")
    params = {value.id for value in graph.params}
    updated = set()
    for parameter, value in graph.updates:
        if parameter.id not in params:
            problems.append(f"update of {parameter.label}: not a parameter of the graph")
        if parameter.id in updated:
            problems.append(f"parameter {parameter.label} is updated twice")
        updated.add(parameter.id)
        if not is_defined(value):
            problems.append(f"update of {parameter.label}: new value {value.label} is not defined in the graph")
        elif not value.type.same_as(parameter.type):
            problems.append(f"update of {parameter.label}: new value {value.label} has type {value.type}, "
                            f"the parameter {parameter.type}")
    if problems:
        raise VerificationError(f"graph ({graph.header}) failed verification with {len(problems)} "
                                f"problem(s):\n  - " + "\n  - ".join(problems))
    return graph
