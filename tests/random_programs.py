"""Random valid programs over the op registry, for differential testing (NNSmith-style).

A program is a recipe: float64 inputs of random shapes, then instructions, each an op of the registry applied to
earlier values with attributes drawn to fit their shapes (broadcasting, axes, permutations, slices, reshapes,
matmul partners). `build(recipe)` turns it into a function over tensors, so the very same program runs eagerly,
traced and compiled. Values that must be positive (log, sqrt, a divisor) come from exp of another value.

Inputs may have an axis of size 0 (a zero-size tensor, which every instruction must carry through forward and
backward), and `inputs_for(..., special=True)` sprinkles 0.0, -0.0, infinities and NaN among the values.

Shared by tests/test_random_programs.py (hypothesis draws and shrinks recipes) and tests/fuzz_programs.py (a
long search with plain random draws).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

UNARY = ("neg", "exp", "tanh", "gelu")
POSITIVE_UNARY = ("log", "sqrt")
BINARY = ("add", "sub", "mul", "maximum")
REDUCTIONS = ("sum", "mean", "max")
COMPARISONS = ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal")
KINDS = ("unary", "positive_unary", "binary", "divide", "reduce", "reshape", "transpose", "broadcast", "slice",
         "matmul", "softmax", "layer_norm", "power", "tensor_power", "where", "cast", "concat", "gather",
         "cross_entropy")


@dataclass
class Recipe:
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    # (kind, op, operands, attrs); an operand is ("input", i) or ("result", j)
    instructions: list[tuple] = field(default_factory=list)

    def ops(self) -> set[str]:
        return {op for _, op, _, _ in self.instructions}


class _Drawing:
    """The recipe being drawn and the shape of every value so far."""

    def __init__(self, choose):
        self.choose = choose
        self.recipe = Recipe()
        self.values: list[tuple[tuple, tuple[int, ...]]] = []  # (reference, shape)

    def new_input(self, shape) -> tuple:
        self.recipe.input_shapes.append(tuple(shape))
        return ("input", len(self.recipe.input_shapes) - 1)

    def broadcast_partner(self, shape) -> tuple:
        """A new input whose shape broadcasts with `shape`: trailing axes kept, some set to 1."""
        keep = self.choose("keep", list(range(len(shape) + 1)))
        partner = tuple(1 if self.choose("one", [False, True]) else d for d in shape[len(shape) - keep:])
        return self.new_input(partner), partner


def draw_recipe(choose, max_instructions: int = 8) -> Recipe:
    """A random valid recipe. `choose(label, options)` picks one of `options` (hypothesis or a Random)."""
    drawing = _Drawing(choose)
    for _ in range(choose("inputs", [1, 2])):
        shape = [choose("dim", [1, 2, 3, 4]) for _ in range(choose("rank", [0, 1, 2, 3]))]
        if shape and choose("empty", [False, False, False, True]):  # one input in eight or so is zero-size
            shape[choose("empty_axis", list(range(len(shape))))] = 0
        drawing.values.append((drawing.new_input(tuple(shape)), tuple(shape)))
    for _ in range(choose("length", list(range(1, max_instructions + 1)))):
        reference, shape = drawing.values[choose("operand", list(range(len(drawing.values))))]
        made = _instruction(drawing, choose("kind", list(KINDS)), reference, shape)
        if made is not None:
            entry, result_shape = made
            drawing.recipe.instructions.append(entry)
            drawing.values.append((("result", len(drawing.recipe.instructions) - 1), result_shape))
    return drawing.recipe


def _instruction(drawing, kind, x, shape):
    """(instruction, result shape) for `kind` applied to value x of `shape`, or None if it does not fit."""
    choose, rank = drawing.choose, len(shape)
    if kind == "unary":
        return (kind, choose("op", list(UNARY)), [x], {}), shape
    if kind == "positive_unary":
        return (kind, choose("op", list(POSITIVE_UNARY)), [x], {}), shape
    if kind in ("binary", "divide", "where", "tensor_power"):
        partner, partner_shape = drawing.broadcast_partner(shape)
        operands = [x, partner] if kind != "binary" or choose("order", [0, 1]) == 0 else [partner, x]
        op = {"binary": lambda: choose("op", list(BINARY)), "divide": lambda: "div",
              "where": lambda: choose("op", list(COMPARISONS)), "tensor_power": lambda: "pow"}[kind]()
        return (kind, op, operands, {}), tuple(np.broadcast_shapes(shape, partner_shape))
    if kind == "reduce" and rank >= 1:
        axes = tuple(sorted({choose("axis", list(range(rank))) for _ in range(choose("count", [1, 2]))}))
        keepdims = choose("keepdims", [False, True])
        result = tuple(1 if a in axes else d for a, d in enumerate(shape)) if keepdims else \
            tuple(d for a, d in enumerate(shape) if a not in axes)
        # The max of an empty axis has no value (refused, as in torch); its sum is 0 and its mean NaN.
        ops = [op for op in REDUCTIONS if op != "max" or all(shape[axis] for axis in axes)]
        return (kind, choose("op", ops), [x], {"axes": axes, "keepdims": keepdims}), result
    if kind == "reshape" and rank >= 1:
        size = math.prod(shape)
        if size == 0:  # any shape with a 0 holds no elements
            target = (choose("factor", [1, 2, 3]), 0) if choose("split", [False, True]) else (0,)
            return (kind, "reshape", [x], {"shape": target}), target
        first = choose("factor", [f for f in range(1, size + 1) if size % f == 0])
        target = (first, size // first) if choose("split", [False, True]) else (size,)
        return (kind, "reshape", [x], {"shape": target}), target
    if kind == "transpose" and rank >= 2:
        perm = choose("perm", [p for p in itertools.permutations(range(rank)) if p != tuple(range(rank))])
        return (kind, "transpose", [x], {"perm": perm}), tuple(shape[a] for a in perm)
    if kind == "broadcast" and rank <= 2:
        target = (choose("lead", [2, 3]),) + tuple(choose("grow", [1, 2, 3]) if d == 1 else d for d in shape)
        return (kind, "broadcast_to", [x], {"shape": target}), target
    if kind == "slice" and rank >= 1:
        slices = []
        for d in shape:
            if d == 0:
                slices.append((0, 0, 1))
                continue
            start = choose("start", list(range(d)))
            slices.append((start, choose("stop", list(range(start + 1, d + 1))), choose("step", [1, 2])))
        return (kind, "slice", [x], {"slices": tuple(slices)}), tuple(len(range(*t)) for t in slices)
    if kind == "matmul" and rank >= 2:
        columns = choose("columns", [1, 2, 3])
        partner = drawing.new_input((shape[-1], columns))
        return (kind, "matmul", [x, partner], {}), shape[:-1] + (columns,)
    if kind == "softmax" and rank >= 1:
        op = choose("op", ["softmax", "log_softmax"])
        return (kind, op, [x], {"axis": choose("axis", list(range(rank)))}), shape
    if kind == "layer_norm" and rank >= 1:
        gamma, beta = drawing.new_input(shape[-1:]), drawing.new_input(shape[-1:])
        return (kind, "layer_norm", [x, gamma, beta], {"eps": 1e-5}), shape
    if kind == "power":
        return (kind, "pow", [x], {"exponent": float(choose("exponent", [2, 3, 0]))}), shape
    if kind == "cast":  # a gate: x * float(x > 0), the bool cast carrying no gradient
        return (kind, "cast", [x], {}), shape
    if kind == "concat" and rank >= 1:
        axis = choose("axis", list(range(rank)))
        return (kind, "concat", [x, x], {"axis": axis}), tuple(2 * d if a == axis else d for a, d in enumerate(shape))
    if kind == "gather" and rank == 2:  # rows of x as an embedding table, at fixed integer positions
        count = choose("count", [1, 2, 3]) if shape[0] else 0  # an empty table: no row to gather
        indices = tuple(choose("row", list(range(shape[0]))) for _ in range(count))
        return (kind, "embedding", [x], {"indices": indices}), (len(indices), shape[1])
    if kind == "cross_entropy" and rank >= 1 and (shape[-1] or not math.prod(shape[:-1])):
        # (no classes is no valid target, unless there are no positions either)
        targets = tuple(choose("target", list(range(shape[-1]))) for _ in range(math.prod(shape[:-1])))
        return (kind, "cross_entropy", [x], {"targets": targets}), ()
    return None


def build(recipe: Recipe):
    """A function of the recipe's inputs (Tensors, eager or traced) returning a scalar: the last value weighted
    by a fixed pattern and summed, so every element of the result matters to the gradient."""

    def program(*tensors):
        results = []

        def value(reference):
            where, index = reference
            return tensors[index] if where == "input" else results[index]

        for kind, op, operands, attrs in recipe.instructions:
            args = [value(reference) for reference in operands]
            x = args[0]
            if kind == "positive_unary":
                positive = x.exp()
                result = positive._apply(op, (positive,))
            elif kind == "divide":
                result = x / args[1].exp()
            elif kind == "tensor_power":  # exp(x) ** b: a positive base, or 0 where x is -inf
                result = x.exp() ** args[1]
            elif kind == "power":
                result = x ** attrs["exponent"]
            elif kind == "where":
                result = x._apply(op, (x, args[1])).where(x, args[1])
            elif kind == "cast":
                result = x * (x > 0.0).astype(x.dtype)
            elif kind == "concat":
                result = x.concat(*args[1:], axis=attrs["axis"])
            elif kind == "gather":
                result = x.embedding(np.array(attrs["indices"], np.int64))
            elif kind == "cross_entropy":
                targets = np.array(attrs["targets"], np.int64).reshape(x.shape[:-1])
                result = x.cross_entropy(targets)
            else:
                result = x._apply(op, tuple(args), attrs)
            results.append(result)
        last = results[-1] if results else tensors[0]
        pattern = np.cos(np.arange(last.size, dtype=np.float64)).reshape(last.shape)
        return (last * pattern).sum()

    return program


SPECIAL_VALUES = np.array([0.0, -0.0, np.inf, -np.inf, np.nan])


def inputs_for(recipe: Recipe, seed: int, special: bool = False) -> list[np.ndarray]:
    """Standard normal float64 inputs; with `special`, about one element in four replaced by one of
    SPECIAL_VALUES (0.0, -0.0, infinities, NaN)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(rng.normal(size=shape)) for shape in recipe.input_shapes]
    if special:
        for array in arrays:
            chosen = rng.random(array.shape) < 0.25
            array[chosen] = rng.choice(SPECIAL_VALUES, size=int(chosen.sum()))
    return arrays
