"""graphgpt: trace a GPT written like TinyTorch into a graph IR, transform it with passes, run it over NumPy.

    import graphgpt, numpy as np
    model = graphgpt.nn.GPT(vocab_size=65, embed_dim=64, num_layers=2, num_heads=4, max_seq_len=32)
    tokens = np.random.randint(0, 65, size=(2, 16))
    fwd = graphgpt.compile(model, tokens)
    print(fwd.graph)                      # the text IR
    logits = fwd.run(tokens)              # NumPy array (2, 16, 65)
    eager = model(graphgpt.Tensor(tokens)).data   # the same, computed op by op
"""

from . import ir, nn, optim, passes
from .compiler import Compiled, InputError, compile, trace
from .executor import ExecutionError, NumericalError
from .gradcheck import GradientReport, check_gradients
from .ir import GraphError, ShapeError, VerificationError
from .random import manual_seed
from .tensor import Parameter, Tensor
from .tracing import TraceError, no_grad

__version__ = "0.1.0"

__all__ = [
    "Compiled", "ExecutionError", "GradientReport", "GraphError", "InputError", "NumericalError", "Parameter", "ShapeError", "Tensor", "TraceError",
    "VerificationError", "check_gradients", "compile", "ir", "manual_seed", "nn", "no_grad", "optim", "passes", "trace",
]
