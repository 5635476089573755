"""The op registry and every op declaration. Importing this package declares all ops."""

from . import attention, composites, elementwise, fused, gradients, matmul, reductions, shape_ops  # noqa: F401  (declares the ops)
from .registry import OPS, OpDef, OpKind, ViewLayout, define_op, get_op

__all__ = ["OPS", "OpDef", "OpKind", "ViewLayout", "define_op", "get_op"]
