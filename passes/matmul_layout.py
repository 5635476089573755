"""Matmul output layout: a batched matmul read only through a transpose that keeps the last axis last is
computed straight into the transposed layout (`matmul_permuted`, ir/ops/matmul.py), so a reshape after it is a
view rather than a copy.

Attention merges its heads so: (B, H, T, D) = weights @ v, then transpose(0, 2, 1, 3) and reshape to (B, T, H*D),
which NumPy can only do by copying; its backward does the same for the gradients of q, k and v. Written in the
(B, T, H, D) layout by the GEMMs themselves (BLAS writes each matrix's rows at a stride: as fast as into a
contiguous array), the copies go: in `graphgpt train`'s shard, 8 copies of ~20 us.

Exact: the same GEMMs over the same operands, only written elsewhere (600 random shapes and layouts, float32 and
float64, gave the same bits). Only products of two batches are rewritten (a batch times one matrix is one GEMM over
all rows, into a contiguous output).

    result = write_matmuls_permuted(graph)
    result.summary   # {"matmuls written permuted": 8}
"""

from __future__ import annotations

from graphgpt.ir import Graph

from .dead_nodes import rewrite_dropping_dead, value_uses
from .result import PassResult


def write_matmuls_permuted(graph: Graph) -> PassResult:
    """Replace transpose(matmul(a, b)) by matmul_permuted(a, b) where the transpose is the product's only reader,
    b is a batch of matrices, and the last axis stays last (then drop the replaced matmuls)."""
    uses = value_uses(graph)

    def matmul_written_permuted(node, inputs, context):
        product = node.inputs[0] if node.op == "transpose" else None
        matmul = product.producer if product is not None else None
        perm = tuple(node.attrs["perm"]) if matmul is not None else ()
        if (matmul is None or matmul.op != "matmul" or uses[product.id] != 1 or matmul.inputs[1].type.rank < 3
                or perm[-1] != len(perm) - 1 or perm == tuple(range(len(perm)))):
            return None
        return context.emit("matmul_permuted", [context.mapped(value) for value in matmul.inputs], {"perm": perm})

    new_graph, count = rewrite_dropping_dead(graph, matmul_written_permuted, "write_matmuls_permuted")
    return PassResult(new_graph, {"matmuls written permuted": count})
