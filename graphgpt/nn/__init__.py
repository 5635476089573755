"""graphgpt.nn: Module and the layers of a GPT, written like TinyTorch's (and run eagerly or traced)."""

from . import functional
from .layers import Embedding, LayerNorm, Linear
from .module import Module
from .transformer import GPT, MLP, MultiHeadAttention, TransformerBlock
from ..tensor import Parameter

__all__ = ["GPT", "MLP", "Embedding", "LayerNorm", "Linear", "Module", "MultiHeadAttention", "Parameter",
           "TransformerBlock", "functional"]
