"""graphgpt.passes: Graph -> Graph transforms, one module each. Passes know graphgpt.ir and nothing above it."""

from .infer_shapes import infer_shapes

__all__ = ["infer_shapes"]
