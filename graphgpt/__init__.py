"""graphgpt: trace a GPT written like TinyTorch into a graph IR, transform it with passes, run it over NumPy.

    import graphgpt, numpy as np
    model = graphgpt.nn.GPT(vocab_size=65, embed_dim=64, num_layers=2, num_heads=4, max_seq_len=32)
    tokens = np.random.randint(0, 65, size=(2, 16))
    fwd = graphgpt.compile(model, tokens)
    print(fwd.graph)                      # the text IR
    logits = fwd.run(tokens)              # NumPy array (2, 16, 65)
    eager = model(graphgpt.Tensor(tokens)).data   # the same, computed op by op

The names below are imported on first use (PEP 562), not here: importing graphgpt.ir or graphgpt.passes runs
this file first, and the layering ir <- passes <- graphgpt means those must not drag in the user-facing layer.
"""

import importlib as _importlib
import importlib.util as _importlib_util

__version__ = "0.1.0"

# Public name -> the submodule (relative to this package) that defines it; a name equal to its submodule is the
# submodule itself. To export a new name, add one row here.
_EXPORTS: dict[str, str] = {
    "Compiled": "compiler",
    "InputError": "compiler",
    "compile": "compiler",
    "trace": "trace_entry",
    "ExecutionError": "passes.schedule",
    "NumericalError": "passes.schedule",
    "LazyCompiled": "lazy",
    "explain_recompiles": "recompiles",
    "CompiledGeneration": "generation",
    "compile_generation": "generation",
    "ExportError": "onnx_export",
    "export_onnx": "onnx_export",
    "GradientReport": "gradcheck",
    "ModelChangedError": "guards",
    "MemoryBudgetError": "passes.rematerialize",
    "check_gradients": "gradcheck",
    "GraphError": "ir",
    "ShapeError": "ir",
    "VerificationError": "ir",
    "manual_seed": "random",
    "Parameter": "tensor",
    "Tensor": "tensor",
    "TraceError": "tracing",
    "enable_autograd": "tracing",
    "no_grad": "tracing",
    "ir": "ir",
    "nn": "nn",
    "optim": "optim",
    "passes": "passes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import a public name, or any submodule (graphgpt.compiler, ...: reachable as attributes before this package
    became lazy), the first time it is asked for, and cache it so later lookups skip this function."""
    if name in _EXPORTS:
        module = _importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = module if name == _EXPORTS[name] else getattr(module, name)
    elif not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
