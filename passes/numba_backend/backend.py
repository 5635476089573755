"""The Numba backend: which nodes of a schedule run a generated kernel instead of their op's NumPy kernel, and the
kernel each gets.

A schedule (passes/schedule.py) asks `kernel_for(node)` for every node that computes into a buffer; a node whose
op has a generator here (layer norm, softmax over the last axis, cross entropy and GELU, and their gradients, fused
elementwise programs and large lone elementwise ops that broadcast an input, sums over leading axes, scatter_add,
fused attention and its gradient), of float32 or float64 (and integer indices), gets a generated kernel,
compiled on its first call. Every other node (matmuls, views, other reductions, ...) keeps NumPy and BLAS. Numba
rather than numexpr or NumPy's out= chains: by measurement (benchmarks/numba_kernels.py --kernels-only, figures
in the README's Backends section), as one loop holds a row's reductions and its elementwise work, and a call costs
under a microsecond.

A kernel calling a scalar library function per element (log or pow; exp or tanh in float64: the float32 ones
are source_text's vectorised exp32 and tanh32) is used up to SMALL_ONLY_MAX_ELEMENTS elements: beyond, NumPy's
SIMD functions beat the scalar calls by more than one pass over memory saves. Float32 softmax, GELU and GELU's
gradient run generated kernels at every size, by measurement (per call, float32, 8*128 x 256, generated / NumPy,
interleaved medians): softmax 272 / 352 us (and 271 / 526 us on rows of 64, the attention weights' width), GELU
139 / 279 us, its gradient 170 / 529 us (as x sigmoid(2u), one exp each; with tanh they took 266 / 252 and
284 / 397 us), where the float64-computed exp and tanh they had before took 562, 940 and 577 us. (Layer norm,
without exp: 87 / 280 us.)

Fused attention (attention_kernels.py) is held to that limit, by measurement: a query row at a time, its
products are short vector loops where NumPy's fused kernel (ir/ops/attention.py) runs BLAS's GEMMs, and exp32
alone takes a third of its time. Per call, float32, causal, generated / NumPy's fused / the composite (matmul,
softmax, matmul; BLAS on one thread), forward and backward: q (1,4,8,16) 8 / 34 / 24 and 17 / 64 / 19 us;
(1,4,32,16) 36 / 49 / 40 and 72 / 91 / 30 us; (4,4,32,16) 137 / 110 / 98 and 280 / 195 / 73 us; the default
`graphgpt train` model's (16,4,64,16) 1.43 / 0.94 / 1.02 and 2.78 / 2.04 / 0.79 ms; (8,8,128,32) 7.7 / 6.1 / 4.7
and 16.7 / 13.6 / 7.1 ms. That step ran 19.4 ms with the generated kernels, 16.9 with NumPy's fused ones, 15.0
with the composite (interleaved medians on a shared 2-core machine; measured with the float64-computed exp; with
the float32 exp32 the train model's forward is 0.93 / 0.88 / 1.38 ms, still no faster than NumPy's fused kernel).

Threads: by default every kernel runs on its caller's thread. With `threads=True`, a kernel over at least
PARALLEL_MIN_ELEMENTS elements runs its rows on every core (`prange`): alone it gains up to 2x on two cores
(layer norm over 256K elements 92 -> 52 us), but inside a training step Numba's OpenMP threads and OpenBLAS's,
both spinning while they wait for work, took each other's cores: the tiny GPT's step went from 8 to 32 ms, the
`graphgpt train` model's from 15 to 154 ms. The spinning is GNU OpenMP's (its default wait policy): with
OMP_WAIT_POLICY=PASSIVE set before the process starts, that step ran 14.9 ms threaded against 15.5 on one thread
(and Numba's workqueue layer 15.8 against 14.4), so threads gain nothing here even then; the variable is the
user's to set (it changes every OpenMP library of the process), not this backend's. Inside
a data-parallel shard (passes/sharded_run.py) kernels are always single-threaded: the shards keep every core busy.
The reductions (reduction_kernels.py) always run on one thread.

With this backend the pipeline also fuses elementwise chains of any size (fuse_elementwise_for_kernels): a
fused program is one loop here, where NumPy runs it block by block and gains only on arrays larger than its
caches (passes/elementwise_fusion.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Optional

from graphgpt.ir import Graph, Node
from graphgpt.ir.types import FLOAT_DTYPES, INTEGER_DTYPES

from ..elementwise_fusion import fuse_elementwise
from ..result import PassResult
from .attention_kernels import attention_grad_source, attention_source
from .elementwise_kernels import (BINARY_EXPRESSIONS, UNARY_EXPRESSIONS, fused_elementwise_source, gelu_grad_source,
                                  gelu_source, lone_elementwise_source)
from .engine import load_kernel
from .reduction_kernels import layer_norm_gamma_grad_source, scatter_add_source, sum_source
from .rowwise_kernels import (cross_entropy_grad_source, cross_entropy_source, layer_norm_grad_source,
                              layer_norm_source, softmax_grad_source, softmax_source)

# op -> its source generator: (node, parallel) -> KernelSource, or None where the node is not for it
SOURCES = {"layer_norm": layer_norm_source, "layer_norm_grad": layer_norm_grad_source, "softmax": softmax_source,
           "gelu": gelu_source, "gelu_grad": gelu_grad_source, "fused_elementwise": fused_elementwise_source,
           "sum": sum_source, "layer_norm_gamma_grad": layer_norm_gamma_grad_source, "scatter_add": scatter_add_source,
           "attention": attention_source, "attention_grad": attention_grad_source,
           "cross_entropy": cross_entropy_source, "cross_entropy_grad": cross_entropy_grad_source,
           "softmax_grad": softmax_grad_source,
           **{op: lone_elementwise_source for op in (*UNARY_EXPRESSIONS, *BINARY_EXPRESSIONS)}}

# Elements from which a kernel runs its rows on every core (threads=True only).
PARALLEL_MIN_ELEMENTS = 1 << 16
# Elements up to which a small_only kernel is used, NumPy's kernel beyond (see the module docstring).
SMALL_ONLY_MAX_ELEMENTS = 1 << 13


@dataclass(frozen=True)
class GeneratedKernel:
    """A node's kernel: its op, its module source (printable), and the compiled function a schedule calls as
    `function(out, *inputs)`; where the output is written over input k (in place), `writing_over[k]` instead
    (elementwise_kernels.py: the same loop, vectorised although the two alias)."""

    op: str
    source: str
    function: Callable
    writing_over: dict[int, Callable] = field(default_factory=dict, compare=False)  # the same source's entries

    def function_for(self, written_over: Optional[int]) -> Callable:
        """The function to call when the output's memory is input `written_over`'s (None: its own)."""
        return self.writing_over.get(written_over, self.function)


def fuse_elementwise_for_kernels(graph: Graph) -> PassResult:
    """fuse_elementwise at every size: each group becomes one generated loop."""
    return fuse_elementwise(graph, min_elements=1)


@dataclass(frozen=True)
class NumbaBackend:
    """Generated Numba kernels for the nodes that have them. `threads`: kernels over large arrays use every core
    (see the module docstring: off by default)."""

    threads: bool = False
    name: str = "numba"
    # The smallest step (floating-point operations) that splits into data-parallel shards by default (NumPy's
    # backend: program_build.MIN_SPLIT_FLOPS). The kernels release the GIL, so the shards' threads run together
    # where NumPy's short calls made them take turns. Measured, split / whole (interleaved fresh processes, 2 cores,
    # medians of 200 steps): the `graphgpt train` model (0.78 GFLOP) 0.78, 0.79 with AdamW, and 0.48 with two busy
    # processes beside it (where the whole step's second BLAS thread waits for a core); the tiny GPT (0.18 GFLOP)
    # 0.96; a 1-layer 32-wide GPT on 4 x 16 tokens 3.2 (the shards' hand-offs outweigh its 0.3 ms).
    min_split_flops: ClassVar[int] = 5 * 10**8

    def single_threaded(self) -> "NumbaBackend":
        """This backend with every kernel on its caller's thread (for data-parallel shards)."""
        return replace(self, threads=False)

    def extra_passes(self) -> tuple[Callable[[Graph], PassResult], ...]:
        """Passes this backend adds to the default pipeline."""
        return (fuse_elementwise_for_kernels,)

    def kernel_for(self, node: Node) -> Optional[GeneratedKernel]:
        """The generated kernel computing `node` into its buffer, or None if it keeps its NumPy kernel."""
        generate = SOURCES.get(node.op)
        out = node.output.type
        if generate is None or out.dtype not in FLOAT_DTYPES or any(  # integer inputs are indices (scatter_add's)
                value.type.dtype not in (out.dtype, *INTEGER_DTYPES) for value in node.inputs):
            return None
        source = generate(node, self.threads and out.size >= PARALLEL_MIN_ELEMENTS)
        if source is None or (source.small_only and out.size > SMALL_ONLY_MAX_ELEMENTS):
            return None
        return GeneratedKernel(source.op, source.text, load_kernel(source.text, source.entry),
                               {k: load_kernel(source.text, f"{source.entry}_over_a{k}") for k in source.written_over})
