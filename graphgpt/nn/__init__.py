"""graphgpt.nn: Module and the layers of a GPT, written like TinyTorch's (and run eagerly or traced)."""

from . import functional
from .functional import create_causal_mask, scaled_dot_product_attention
from .layers import Embedding, LayerNorm, Linear
from .module import Module
from .transformer import GPT, MLP, MultiHeadAttention, TransformerBlock
from ..tensor import Parameter

__all__ = ["GPT", "MLP", "Embedding", "LayerNorm", "Linear", "Module", "MultiHeadAttention", "Parameter",
           "TransformerBlock", "create_causal_mask", "functional", "scaled_dot_product_attention"]
