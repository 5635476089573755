"""graphgpt.nn: Module and the layers of a GPT, written like TinyTorch's (and run eagerly or traced); the
activations, losses, Dropout, PositionalEncoding and CharTokenizer the course's code reaches for."""

from . import functional
from .activations import GELU, BCELoss, CrossEntropyLoss, MSELoss, ReLU, Sigmoid, Softmax, Tanh
from .dropout import Dropout
from .functional import create_causal_mask, scaled_dot_product_attention
from .kv_cache import KVCache
from .layers import Embedding, LayerNorm, Linear, PositionalEncoding
from .module import Module
from .tokenizer import CharTokenizer
from .transformer import GPT, MLP, MultiHeadAttention, TransformerBlock
from ..tensor import Parameter

__all__ = ["BCELoss", "CharTokenizer", "CrossEntropyLoss", "Dropout", "Embedding", "GELU", "GPT", "KVCache",
           "LayerNorm", "Linear", "MLP", "MSELoss", "Module", "MultiHeadAttention", "Parameter", "PositionalEncoding",
           "ReLU", "Sigmoid", "Softmax", "Tanh", "TransformerBlock", "create_causal_mask", "functional",
           "scaled_dot_product_attention"]
