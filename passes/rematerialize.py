"""Rematerialisation: trade compute for memory in a training graph. Forward values the backward pass reads (saved
activations) are alive from the forward pass to their last backward use, and they make the peak of a training
step's memory. Some are cheap to compute again from others: the pass chooses which to keep and which forward ops
the backward repeats, and the repeated ops (role "recompute") run right before their first backward use.

The choice is a minimum cut, as PyTorch's AOTAutograd partitioner (`min_cut_rematerialization_partition`) makes
it, over a flow network of the forward region (every node before the first backward node). Each forward node n
is two vertices, n_in and n_out:

- n_in -> n_out, capacity the bytes of keeping n's value (its memory owner's: a view keeps its source alive;
  nothing for values that live anyway: results, views of parameters);
- source -> n_in, capacity the cost of recomputing n (its FLOPs at the step's exchange rate, plus one so that a
  free choice keeps rather than repeats), infinite for ops the step does not recompute (matmuls by default);
- m_out -> n_in, infinite, for each forward input m of n; n_out -> sink, infinite, when a backward node reads n.

A cut puts n_out on the sink side when the backward needs n's value, and n_in there too when it recomputes n (so
every forward input of a recomputed node is needed as well); its capacity is the bytes kept plus the cost of what
is recomputed, which the minimum cut minimises. Views, inputs, parameters and constants are free to read. A value
leaving a transformer block (`blocks.N`: its output, the next block's input) is never recomputed: otherwise the
first backward node would need the whole forward pass again, all of it alive at once, and the peak with it.

Policies: "mincut" (the cut above; views, elementwise ops and layer norm unless a budget asks for more),
"checkpoint_blocks" (each transformer block recomputed whole from its input, as torch.utils.checkpoint users do
by hand), "none". With a memory budget (bytes, or "60%" of the plan without rematerialisation) the min cut
loosens what counts as cheap, step by step (RECOMPUTABLE_STEPS) and block by block between steps, until the
memory plan fits, or raises MemoryBudgetError naming the smallest plan it reached and what fills it.

    result = rematerialize(training_graph, policy="mincut", memory_budget="60%")
    result.graph             # nodes of role "recompute" in the backward region; the verifier accepts it

Recomputation repeats the very ops on the very inputs, in the same layouts, so gradients are bit-identical.
Dropout masks are recomputed from the same key (a parameter, read before the update writes it).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

import networkx as nx

from graphgpt.ir import Graph, GraphBuilder, GraphError, Node, OpKind, Value, get_op

from .dead_nodes import eliminate_dead_nodes
from .memory_plan import MemoryPlan, plan_memory
from .result import PassResult
from .rewrite import copied_results, copy_leaves
from .saved_activations import (RECOMPUTE, flops_of, format_bytes, forward_region_end, peak_contents,
                                recomputed_nodes, saved_bytes)

POLICIES = ("none", "mincut", "checkpoint_blocks")
MemoryBudget = Union[None, int, str]


class RematerializationError(GraphError, ValueError):
    """A rematerialisation policy cannot apply to this graph (checkpoint_blocks without blocks), or no plan fits."""


class MemoryBudgetError(RematerializationError):
    """No rematerialisation reaches the memory budget: the message names the smallest plan and what fills it."""


@dataclass(frozen=True)
class RecomputableStep:
    """One step of what the min cut may recompute: which forward ops, and how many FLOPs of recomputation are
    worth one byte of memory (None: any, FLOPs only choosing between cuts that keep the same bytes)."""

    name: str
    allows: Callable[[Node], bool]
    flops_per_byte: Optional[int]


_CHEAP_KINDS = (OpKind.ELEMENTWISE, OpKind.BROADCAST, OpKind.INJECTIVE)


def _cheap(node: Node) -> bool:
    """Views, reshapes, elementwise ops (GELU among them), gathers and layer norm: a few FLOPs per element."""
    return get_op(node.op).kind in _CHEAP_KINDS or node.op == "layer_norm"


def _no_matmul(node: Node) -> bool:
    return _cheap(node) or get_op(node.op).kind == OpKind.REDUCTION or node.op in (
        "softmax", "log_softmax", "dropout_mask")


def _anything(node: Node) -> bool:
    return True


# The budget loop's ladder, from least to most recomputation; the first is the default without a budget. 128
# FLOPs per byte is a matmul contracting 256 (2 * 256 FLOPs per 4-byte element): an attention's scores (q @ k^T,
# contracting the head size) fall below the second matmul step, the projections of a 256-wide model between.
RECOMPUTABLE_STEPS = (
    RecomputableStep("views, elementwise ops and layer norm", _cheap, 16),
    RecomputableStep("also softmax, reductions and dropout masks", _no_matmul, 16),
    RecomputableStep("also matmuls of up to 32 FLOPs per byte", _anything, 32),
    RecomputableStep("also matmuls of up to 256 FLOPs per byte", _anything, 256),
    RecomputableStep("anything, for the fewest bytes", _anything, None),
)


@dataclass(frozen=True)
class RematOptions:
    """A policy (POLICIES) and a memory budget: bytes (an int), a percentage of the plan without
    rematerialisation ("60%"), or None. `RematOptions.of` checks them."""

    policy: str = "none"
    memory_budget: MemoryBudget = None

    @classmethod
    def of(cls, policy: Optional[str] = None, memory_budget: MemoryBudget = None) -> "RematOptions":
        """Checked options, or ValueError in one line. A budget without a policy means "mincut"; neither, "none".

        >>> RematOptions.of(memory_budget="60%")
        RematOptions(policy='mincut', memory_budget='60%')
        """
        if policy is None:
            policy = "mincut" if memory_budget is not None else "none"
        if policy not in POLICIES:
            raise ValueError(f"remat_policy must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
        if isinstance(memory_budget, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*%\s*", memory_budget)
            if match is None or not 0 < float(match.group(1)) <= 100:
                raise ValueError(f"memory_budget must be bytes (an int) or a percentage of the plan without "
                                 f"rematerialisation such as '60%' (above 0, at most 100), got {memory_budget!r}")
            memory_budget = memory_budget.strip()
        elif memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                            or memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive number of bytes or a percentage such as '60%', "
                             f"got {memory_budget!r}")
        return cls(policy, memory_budget)

    @property
    def active(self) -> bool:
        """Whether the pass has anything to do: recompute, or check a budget."""
        return self.policy != "none" or self.memory_budget is not None

    def describe(self) -> str:
        """'mincut, memory budget 60%'."""
        return self.policy + ("" if self.memory_budget is None else f", memory budget {self.memory_budget}")

    def budget_bytes(self, planned_without: int) -> Optional[int]:
        """The budget in bytes, given the planned bytes without rematerialisation."""
        if isinstance(self.memory_budget, str):
            return int(planned_without * float(self.memory_budget.rstrip("% ")) / 100)
        return self.memory_budget


def _keep_costs(graph: Graph, plan: MemoryPlan, end: int) -> dict[int, int]:
    """Bytes of keeping each forward value to the backward pass: its memory owner's, if that is a planned buffer
    that would not live to the end anyway (results do)."""
    results = {value.id for value in graph.results()}
    sizes = {node.output.id: node.output.type.nbytes for node in graph.nodes}
    costs = {}
    for node in graph.nodes[:end]:
        owner = plan.liveness.owner[node.output.id]
        buffered = plan.storage[owner].kind == "buffer" and owner in sizes
        costs[node.output.id] = sizes[owner] if buffered and owner not in results else 0
    return costs


def _min_cut_recompute(graph: Graph, plan: MemoryPlan, end: int, step: RecomputableStep) -> set[int]:
    """Ids of the forward values the backward recomputes in the minimum cut at `step`."""
    keep = _keep_costs(graph, plan, end)
    forward = {node.output.id: node for node in graph.nodes[:end] if node.op != "constant"}
    leaving = _block_outputs(graph, end)
    network = nx.DiGraph()
    for value_id, node in forward.items():
        network.add_edge(("in", value_id), ("out", value_id), capacity=keep[value_id])
        if step.allows(node) and value_id not in leaving:
            flops = get_op(node.op).flops(node.output.type, [value.type for value in node.inputs], node.attrs)
            cost = 1 + (0 if step.flops_per_byte is None else int(flops) // step.flops_per_byte)
            network.add_edge("source", ("in", value_id), capacity=cost)
        else:
            network.add_edge("source", ("in", value_id))  # no capacity: infinite, never recomputed
        for value in node.inputs:
            if value.id in forward:
                network.add_edge(("out", value.id), ("in", value_id))
    needed = {value.id for node in graph.nodes[end:] for value in node.inputs if value.id in forward}
    if not needed:
        return set()
    for value_id in needed:
        network.add_edge(("out", value_id), "sink")
    _, (source_side, _) = nx.minimum_cut(network, "source", "sink")
    return {value_id for value_id in forward if ("in", value_id) not in source_side}


_BLOCK = re.compile(r"blocks\.\d+(?=\.|$)")


def _block_of(node: Node) -> str:
    """'blocks.3' for a node of a transformer block (module path blocks.3 or under it), else ''."""
    match = _BLOCK.match(node.provenance.module_path)
    return match.group(0) if match else ""


def _block_outputs(graph: Graph, end: int) -> set[int]:
    """Forward values read by forward nodes of another block (`blocks.N`, or none: the embeddings, the head): a
    block's output, the next block's input. Never recomputed: each block then recomputes from its own input,
    so what the backward pass of one block recomputes is alive for that block only, not all at once from the
    first backward node (which would need the whole forward pass again, and its peak with it)."""
    block = {node.output.id: _block_of(node) for node in graph.nodes[:end]}
    return {value.id for node in graph.nodes[:end] for value in node.inputs
            if value.id in block and block[value.id] != block[node.output.id]}


def _checkpoint_blocks_recompute(graph: Graph, end: int) -> set[int]:
    """Every forward node of a block `blocks.N` but the block's outputs, as torch.utils.checkpoint recomputes a
    block from its input."""
    forward = [node for node in graph.nodes[:end] if node.op != "constant"]
    if not any(_block_of(node) for node in forward):
        raise RematerializationError("checkpoint_blocks recomputes each transformer block, the nodes of module "
                                     "path blocks.N, and this graph has none: use remat_policy='mincut'")
    kept = _block_outputs(graph, end) | {value.id for value in graph.results()}
    return {node.output.id for node in forward if _block_of(node) and node.output.id not in kept}


def _recompute_into(graph: Graph, end: int, recompute: set[int], header: str) -> Graph:
    """`graph` with the backward region reading recomputed copies of the forward values in `recompute`, each
    copy made right before the first backward node needing it (after the copies it reads); then without the
    forward nodes nothing reads any more."""
    builder = GraphBuilder(header=header)
    new_values = copy_leaves(graph, builder)
    for node in graph.nodes[:end]:
        new_values[node.output.id] = builder.add_node(node.op, [new_values[v.id] for v in node.inputs], node.attrs,
                                                      node.provenance, value_id=node.output.id)
    copies: dict[int, Value] = {}

    def recomputed(value: Value) -> Value:
        pending = [value.producer]  # depth first, inputs before the node reading them; no recursion limit
        while pending:
            node = pending[-1]
            missing = [v.producer for v in node.inputs if v.id in recompute and v.id not in copies]
            if missing:
                pending.extend(missing)
                continue
            pending.pop()
            if node.output.id in copies:
                continue
            inputs = [copies[v.id] if v.id in recompute else new_values[v.id] for v in node.inputs]
            provenance = dataclasses.replace(node.provenance, role=RECOMPUTE, differentiates=None)
            copies[node.output.id] = builder.add_node(node.op, inputs, node.attrs, provenance)
        return copies[value.id]

    for node in graph.nodes[end:]:
        inputs = [recomputed(v) if v.id in recompute else new_values[v.id] for v in node.inputs]
        new_values[node.output.id] = builder.add_node(node.op, inputs, node.attrs, node.provenance,
                                                      value_id=node.output.id)
    rebuilt = eliminate_dead_nodes(builder.finish(*copied_results(graph, new_values))).graph
    rebuilt.header = header  # a new graph of this pass's own: the header says what made it
    return rebuilt


def _needed_closure(graph: Graph, end: int, candidates: set[int]) -> set[int]:
    """The candidates the backward region actually needs recomputed: read by it, or by another such one."""
    producers = {node.output.id: node for node in graph.nodes[:end]}
    pending = [value.id for node in graph.nodes[end:] for value in node.inputs if value.id in candidates]
    needed: set[int] = set()
    while pending:
        value_id = pending.pop()
        if value_id in needed:
            continue
        needed.add(value_id)
        pending.extend(v.id for v in producers[value_id].inputs if v.id in candidates)
    return needed


def _attempt(graph: Graph, end: int, recompute: set[int], header: str) -> tuple[Graph, MemoryPlan]:
    new = _recompute_into(graph, end, _needed_closure(graph, end, recompute), header)
    return new, plan_memory(new)


def recompute_at_step(graph: Graph, step: RecomputableStep, plan: Optional[MemoryPlan] = None) -> Graph:
    """`graph` rematerialised by the minimum cut at one step of RECOMPUTABLE_STEPS, whatever memory it takes."""
    end = forward_region_end(graph)
    recompute = _min_cut_recompute(graph, plan or plan_memory(graph), end, step)
    return _recompute_into(graph, end, _needed_closure(graph, end, recompute), f"rematerialize (mincut: {step.name})")


def _mincut_attempts(graph: Graph, plan: MemoryPlan, end: int, limit: Optional[int], header: str) -> list:
    """(graph, plan, what it recomputes) for each cut tried, the last the one to keep: without a budget, the first
    step's; with one, step after step until one fits. Between a step and the next, the next step's choices are
    taken block by block (blocks.0 first, whose values are kept longest; nodes outside blocks last), for the
    fewest blocks that fit, found by bisection: each block recomputing more costs FLOPs the others need not."""
    forward = graph.nodes[:end]
    block = {node.output.id: _block_of(node) for node in forward}
    groups = sorted({block[node.output.id] for node in forward}, key=lambda name: (not name, _block_number(name)))
    attempts = []

    def attempt(recompute: set[int], what: str) -> tuple:
        attempts.append((*_attempt(graph, end, recompute, f"{header}{what})"), what))
        return attempts[-1]

    def fits(entry: tuple) -> bool:
        return limit is None or entry[1].planned_bytes <= limit

    previous = None
    for step in RECOMPUTABLE_STEPS if limit is not None else RECOMPUTABLE_STEPS[:1]:
        current = _min_cut_recompute(graph, plan, end, step)
        if previous is not None:
            earlier, earlier_name = previous
            changed = [group for group in groups if {v for v in current if block[v] == group}
                       != {v for v in earlier if block[v] == group}]
            best, low, high = None, 1, len(changed) - 1  # block counts strictly between the two steps
            while low <= high:
                middle = (low + high) // 2
                chosen = set(changed[:middle])
                mixed = {v for v in current if block[v] in chosen} | {v for v in earlier if block[v] not in chosen}
                entry = attempt(mixed, f"{step.name} in {middle} of {len(changed)} blocks, {earlier_name} elsewhere")
                if fits(entry):
                    best, high = entry, middle - 1
                else:
                    low = middle + 1
            if best is not None:
                attempts.append(best)  # the one to keep, last
                return attempts
        if fits(attempt(current, step.name)):
            return attempts
        previous = current, step.name
    return attempts


def _block_number(name: str) -> int:
    return int(name.rpartition(".")[2]) if name else 0


def rematerialize(graph: Graph, policy: str = "mincut", memory_budget: MemoryBudget = None,
                  plan: Optional[MemoryPlan] = None) -> PassResult:
    """`graph` (a training graph of concrete sizes) with the forward values `policy` chooses recomputed in the
    backward pass; unchanged if it has no backward pass. `memory_budget` (bytes or "60%") bounds the planned
    bytes: the min cut recomputes more, step by step, until the plan fits, and MemoryBudgetError says the
    smallest plan reached and what fills it if none does. `plan`: the graph's memory plan, if made already."""
    options = RematOptions.of(policy, memory_budget)
    end = forward_region_end(graph)
    if end == len(graph.nodes) or not options.active:
        return PassResult(graph, {})
    plan = plan or plan_memory(graph)
    limit = options.budget_bytes(plan.planned_bytes)
    within = "" if limit is None else f", budget {options.memory_budget} = {format_bytes(limit)}"
    attempts = []  # (graph, plan, what it recomputes), least recomputation first
    if options.policy == "none":
        attempts.append((graph, plan, "nothing"))
    elif options.policy == "checkpoint_blocks":
        header = f"rematerialize (checkpoint_blocks{within})"
        recompute = _checkpoint_blocks_recompute(graph, end)
        attempts.append((*_attempt(graph, end, recompute, header), "each block whole"))
    else:
        attempts = _mincut_attempts(graph, plan, end, limit, f"rematerialize (mincut{within}: ")
    new, new_plan, _ = attempts[-1]
    if options.policy == "mincut" and new_plan.planned_bytes > plan.planned_bytes:
        new, new_plan = graph, plan  # recomputing made the plan no smaller (buffers it could not share)
    if limit is not None and new_plan.planned_bytes > limit:
        smallest = min([*attempts, (graph, plan, "nothing")], key=lambda attempt: attempt[1].planned_bytes)
        raise MemoryBudgetError(_refusal(graph, plan, smallest, options, limit))
    return PassResult(new, {"nodes recomputed": len(recomputed_nodes(new)),
                            "saved KiB freed": (saved_bytes(graph, plan) - saved_bytes(new, new_plan)) // 1024})


def _refusal(graph: Graph, plan: MemoryPlan, smallest, options: RematOptions, limit: int) -> str:
    """One line: the budget, the smallest plan reached and how, and what fills its peak."""
    new, new_plan, how = smallest
    extra = flops_of(recomputed_nodes(new)) / max(flops_of(graph.nodes), 1)
    return (f"no plan fits memory_budget {options.memory_budget!r} ({format_bytes(limit)}): the smallest "
            f"{options.policy} reaches is {format_bytes(new_plan.planned_bytes)}, from "
            f"{format_bytes(plan.planned_bytes)} without rematerialisation (recomputing {how}, +{extra:.0%} "
            f"FLOPs); {peak_contents(new, new_plan)}")
