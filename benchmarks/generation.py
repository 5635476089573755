"""Generation speed: tokens/s of N new tokens after a prompt, side by side in one run, for graphgpt's eager
generate (the whole context recomputed per token), graphgpt's compiled graphs without and with the KV cache, and
KV-cache decoders written by hand with the same weights.

    python benchmarks/generation.py                  # 2-layer 128-wide and 6-layer 256-wide GPTs
    python benchmarks/generation.py --quick --repeats 3   # the small one only

Contenders, all greedy (argmax, so their tokens can be compared), prompt 16 tokens, 200 new tokens:
  eager        model.generate(prompt, N, top_k=1, use_cache=False): one eager forward of the context per token
  compiled     graphgpt.compile_generation's prefill graphs per token (the context padded to 16, 32, ...
               max_seq_len tokens): the compiled forward without a cache
  compiled-kv  model.generate(prompt, N, top_k=1): the compiled prefill, then the decode graph over the KV cache
  kv-numba     the same graphs compiled with backend="numba" (generated kernels for layer norm, softmax, GELU and
               fused elementwise chains), when numba is installed
  numpy-kv     a hand-written NumPy decoder (below): prefill the prompt into a cache of shape
               (layers, 2, batch, heads, max_seq_len, head_dim), then one token per step reading and appending to it
  torch-kv     the same decoder in PyTorch (when installed), torch.inference_mode, intra-op threads = BLAS threads
Prefill: the compiled prefill graph (the prompt padded to 16, 32, 64, ... tokens) against the NumPy decoder's
prefill of the 16-token prompt.

Timing: every repetition runs each contender in a fresh random order, one full generation each; medians and
interquartile ranges are reported with ratios. One BLAS thread by default, as the issue's figures used: the
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS a user sets are kept.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before NumPy loads BLAS; a test importing this module keeps its own settings
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphgpt  # noqa: E402
from graphgpt.timing import interleaved_times  # noqa: E402
from baseline_numpy import EPS, GELU_C, GELU_K, _layer_norm as _layer_norm_with_cache  # noqa: E402

CONFIGS = {
    "2L-128": dict(vocab=65, embed=128, layers=2, heads=4, max_seq_len=256, prompt=16, new_tokens=200),
    "6L-256": dict(vocab=65, embed=256, layers=6, heads=8, max_seq_len=256, prompt=16, new_tokens=200),
}


def _layer_norm(x, gamma, beta):
    return _layer_norm_with_cache(x, gamma, beta)[0]  # the training baseline's, without what backward keeps


def numpy_forward_cached(params: dict, tokens: np.ndarray, start: int, cache: np.ndarray, num_heads: int):
    """Logits (B, T, vocab) of `tokens` (B, T) standing at positions start..start+T-1, attending to the cache's
    first `start` positions and causally among themselves; their keys and values are written into the cache
    (layers, 2, B, heads, max_seq_len, head_dim). A prefill is start=0 with the prompt, a decode step T=1."""
    p = params
    batch, length = tokens.shape
    width = p["token_embedding.weight"].shape[1]
    head_dim, end = width // num_heads, start + length
    x = p["token_embedding.weight"][tokens] + p["position_embedding.weight"][start:end]
    # Query i (position start+i) may see keys 0..start+i.
    mask = np.where(np.arange(end)[None, :] > np.arange(start, end)[:, None], -np.inf, 0.0).astype(x.dtype)
    for layer in range(cache.shape[0]):
        prefix = f"blocks.{layer}"
        h = _layer_norm(x, p[f"{prefix}.ln1.gamma"], p[f"{prefix}.ln1.beta"])

        def heads(name):  # (B, T, C) -> (B, H, T, hd)
            y = h @ p[f"{prefix}.attention.{name}.weight"] + p[f"{prefix}.attention.{name}.bias"]
            return y.reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)

        cache[layer, 0, :, :, start:end] = heads("k_proj")
        cache[layer, 1, :, :, start:end] = heads("v_proj")
        keys, values = cache[layer, 0, :, :, :end], cache[layer, 1, :, :, :end]
        scores = heads("q_proj") @ keys.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(head_dim)) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        merged = (scores @ values).transpose(0, 2, 1, 3).reshape(batch, length, width)
        x = x + merged @ p[f"{prefix}.attention.out_proj.weight"] + p[f"{prefix}.attention.out_proj.bias"]
        h = _layer_norm(x, p[f"{prefix}.ln2.gamma"], p[f"{prefix}.ln2.beta"])
        u = h @ p[f"{prefix}.mlp.linear1.weight"] + p[f"{prefix}.mlp.linear1.bias"]
        hidden = 0.5 * u * (1.0 + np.tanh(GELU_C * (u + GELU_K * u * u * u)))
        x = x + hidden @ p[f"{prefix}.mlp.linear2.weight"] + p[f"{prefix}.mlp.linear2.bias"]
    return _layer_norm(x, p["ln_f.gamma"], p["ln_f.beta"]) @ p["lm_head.weight"]


def numpy_empty_cache(params: dict, batch: int, num_heads: int) -> np.ndarray:
    """A zeroed cache (layers, 2, batch, heads, max_seq_len, head_dim) for the GPT of `params`."""
    layers = sum(1 for name in params if name.endswith(".ln1.gamma"))
    max_seq_len, width = params["position_embedding.weight"].shape
    return np.zeros((layers, 2, batch, num_heads, max_seq_len, width // num_heads),
                    params["token_embedding.weight"].dtype)


def numpy_kv_generate(params: dict, prompt: np.ndarray, new_tokens: int, num_heads: int):
    """Greedy decoding with a KV cache: (tokens (B, T + new_tokens), logits (new_tokens, B, vocab)), the logits
    each new token was chosen from (the prefill's last position, then one decode step per token)."""
    batch, length = prompt.shape
    max_seq_len = params["position_embedding.weight"].shape[0]
    if length + new_tokens > max_seq_len:
        raise ValueError(f"numpy_kv_generate: prompt {length} + {new_tokens} new tokens exceeds max_seq_len "
                         f"{max_seq_len} (this decoder does not slide the window)")
    cache = numpy_empty_cache(params, batch, num_heads)
    tokens = np.empty((batch, length + new_tokens), np.int64)
    tokens[:, :length] = prompt
    step_logits = []
    logits = numpy_forward_cached(params, prompt, 0, cache, num_heads)[:, -1]
    for position in range(length, length + new_tokens):
        step_logits.append(logits)
        tokens[:, position] = logits.argmax(-1)
        if position + 1 < length + new_tokens:  # the last token's successor is never needed
            logits = numpy_forward_cached(params, tokens[:, position:position + 1], position, cache, num_heads)[:, -1]
    return tokens, np.stack(step_logits)


def make_torch_kv_generate(params: dict, num_heads: int):
    """The NumPy decoder's twin in PyTorch: a function prompt, new_tokens -> (tokens, logits) as NumPy arrays."""
    import torch
    import torch.nn.functional as F

    w = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in params.items()}
    layers = sum(1 for name in w if name.endswith(".ln1.gamma"))
    max_seq_len, width = w["position_embedding.weight"].shape
    head_dim = width // num_heads

    def forward(tokens, start, cache):
        batch, length = tokens.shape
        end = start + length
        x = w["token_embedding.weight"][tokens] + w["position_embedding.weight"][start:end]
        mask = torch.zeros(length, end).masked_fill(torch.arange(end)[None, :] > torch.arange(start, end)[:, None],
                                                    float("-inf"))
        for layer in range(layers):
            p = f"blocks.{layer}"
            h = F.layer_norm(x, (width,), w[f"{p}.ln1.gamma"], w[f"{p}.ln1.beta"], eps=EPS)

            def heads(name):
                y = h @ w[f"{p}.attention.{name}.weight"] + w[f"{p}.attention.{name}.bias"]
                return y.view(batch, length, num_heads, head_dim).transpose(1, 2)

            cache[layer, 0, :, :, start:end] = heads("k_proj")
            cache[layer, 1, :, :, start:end] = heads("v_proj")
            scores = heads("q_proj") @ cache[layer, 0, :, :, :end].transpose(-2, -1) / math.sqrt(head_dim) + mask
            merged = (torch.softmax(scores, -1) @ cache[layer, 1, :, :, :end]).transpose(1, 2).reshape(
                batch, length, width)
            x = x + merged @ w[f"{p}.attention.out_proj.weight"] + w[f"{p}.attention.out_proj.bias"]
            h = F.layer_norm(x, (width,), w[f"{p}.ln2.gamma"], w[f"{p}.ln2.beta"], eps=EPS)
            hidden = F.gelu(h @ w[f"{p}.mlp.linear1.weight"] + w[f"{p}.mlp.linear1.bias"], approximate="tanh")
            x = x + hidden @ w[f"{p}.mlp.linear2.weight"] + w[f"{p}.mlp.linear2.bias"]
        return F.layer_norm(x, (width,), w["ln_f.gamma"], w["ln_f.beta"], eps=EPS) @ w["lm_head.weight"]

    def generate(prompt: np.ndarray, new_tokens: int):
        batch, length = prompt.shape
        with torch.inference_mode():
            cache = torch.zeros(layers, 2, batch, num_heads, max_seq_len, head_dim)
            tokens = torch.empty(batch, length + new_tokens, dtype=torch.int64)
            tokens[:, :length] = torch.from_numpy(prompt)
            step_logits = []
            logits = forward(tokens[:, :length], 0, cache)[:, -1]
            for position in range(length, length + new_tokens):
                step_logits.append(logits)
                tokens[:, position] = logits.argmax(-1)
                if position + 1 < length + new_tokens:
                    logits = forward(tokens[:, position:position + 1], position, cache)[:, -1]
            return tokens.numpy(), torch.stack(step_logits).numpy()
    return generate


def compiled_uncached_generate(generation, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding by the compiled prefill graph alone: the whole (padded) context window per token."""
    tokens = list(prompt[0])
    window = generation.window
    for _ in range(new_tokens):
        context = np.array([tokens[-window:]], np.int64)
        tokens.append(int(np.argmax(generation.prefill_logits(context)[0])))
    return np.array([tokens])


def eager_step_logits(model, tokens: np.ndarray, prompt_length: int) -> np.ndarray:
    """The logits each generated token was chosen from, by one eager forward of the whole sequence (causal, so
    position t's logits are those a step with context ..t computes): (new_tokens, B, vocab)."""
    with graphgpt.no_grad():
        logits = model(graphgpt.Tensor(tokens[:, :-1])).data
    return logits[:, prompt_length - 1:].transpose(1, 0, 2)


def compiled_kv_generate(prompt: np.ndarray, new_tokens: int, model):
    """Greedy decoding through compile_generation's graphs: (tokens, the logits each token was chosen from)."""
    generation = graphgpt.compile_generation(model)
    length = prompt.shape[1]
    tokens = model.generate(prompt, new_tokens, top_k=1, seed=0).data
    logits = [generation.prefill_logits(prompt)]
    logits += [generation.decode_logits(tokens[:, position], position)
               for position in range(length, length + new_tokens - 1)]
    return tokens, np.stack(logits)


def spread(values: list) -> str:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{statistics.median(values) * 1e3:9.1f} ms (IQR {quartiles[0] * 1e3:.1f}-{quartiles[2] * 1e3:.1f})"


def blas_threads() -> str:
    settings = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in ("OPENBLAS_NUM_THREADS",
                                                                               "OMP_NUM_THREADS"))
    try:
        from threadpoolctl import threadpool_info
        used = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
    except ImportError:
        used = "unknown (threadpoolctl not installed)"
    return f"{settings}; BLAS threads in use: {used}"


def run_config(name: str, config: dict, repeats: int) -> None:
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(config["vocab"], config["embed"], config["layers"], config["heads"],
                            max_seq_len=config["max_seq_len"])
    params = model.state_dict()
    prompt = np.random.default_rng(0).integers(0, config["vocab"], (1, config["prompt"]))
    heads, new_tokens = config["heads"], config["new_tokens"]
    generation = graphgpt.compile_generation(model)
    model.generate(prompt, 1, top_k=1, seed=0)  # compiles GPT.generate's kept generation before any timing
    runs = {"eager": lambda: model.generate(prompt, new_tokens, top_k=1, seed=0, use_cache=False).data,
            "compiled": lambda: compiled_uncached_generate(generation, prompt, new_tokens),
            "compiled-kv": lambda: model.generate(prompt, new_tokens, top_k=1, seed=0).data}
    if importlib.util.find_spec("numba") is not None:
        numba_generation = graphgpt.compile_generation(model, backend="numba")
        runs["kv-numba"] = lambda: numba_generation.generate(prompt, new_tokens, top_k=1)
    else:
        print("(numba not installed: no kv-numba column; `pip install numba` for generated kernels)")
    runs["numpy-kv"] = lambda: numpy_kv_generate(params, prompt, new_tokens, heads)[0]
    print(f"\nGPT {name}: {config}; {repeats} interleaved repetitions, medians")
    torch_generate = None
    try:
        import torch
    except ImportError:
        print("(torch not installed: no torch-kv column; `pip install torch==2.13.0` to compare with PyTorch)")
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
        print(f"(torch {torch.__version__}, {torch.get_num_threads()} intra-op threads)")
        torch_generate = make_torch_kv_generate(params, heads)
        runs["torch-kv"] = lambda: torch_generate(prompt, new_tokens)[0]

    def prefill():
        numpy_forward_cached(params, prompt, 0, numpy_empty_cache(params, 1, heads), heads)

    check_agreement(model, params, prompt, runs, torch_generate, config)
    timed = dict(runs, **{"numpy-kv prefill": prefill, "compiled prefill": lambda: generation.prefill_logits(prompt)})
    for run in timed.values():
        run()  # warm-up
    times = interleaved_times(timed, repeats)
    medians = {contender: statistics.median(values) for contender, values in times.items()}
    print(f"{'contender':<18} {'per generation':>34} {'tokens/s':>9}" + "".join(f" {'/ ' + c:>11}" for c in runs))
    for contender in runs:
        row = f"{contender:<18} {spread(times[contender]):>34} {new_tokens / medians[contender]:>9.0f}"
        print(row + "".join(f" {medians[other] / medians[contender]:>11.2f}" for other in runs))
    padded = generation.prefill_for(config["prompt"]).input_types[0].shape[1]
    print(f"prefill of the {config['prompt']}-token prompt: compiled (padded to {padded}) "
          f"{spread(times['compiled prefill'])}; numpy-kv {spread(times['numpy-kv prefill'])}")
    print("(ratio columns: how many times faster the row is than the column)")


def check_agreement(model, params, prompt, runs, torch_generate, config) -> None:
    """Print whether every contender's greedy tokens equal the eager ones, and how far the logits differ."""
    length, new_tokens, heads = config["prompt"], config["new_tokens"], config["heads"]
    eager_tokens = runs["eager"]()
    reference_logits = eager_step_logits(model, eager_tokens, length)
    others = {"compiled": (runs["compiled"](), None),
              "compiled-kv": compiled_kv_generate(prompt, new_tokens, model),
              **({"kv-numba": (runs["kv-numba"](), None)} if "kv-numba" in runs else {}),
              "numpy-kv": numpy_kv_generate(params, prompt, new_tokens, heads)}
    if torch_generate is not None:
        others["torch-kv"] = torch_generate(prompt, new_tokens)
    for contender, (tokens, logits) in others.items():
        same = np.array_equal(tokens, eager_tokens)
        difference = "" if logits is None else (
            f"; max |logit - eager logit| {float(np.abs(logits - reference_logits).max()):.2e} over {new_tokens} steps")
        verdict = "tokens equal the eager ones" if same else (
            f"!!! TOKENS DIFFER from the eager ones from step {int(np.argmax((tokens != eager_tokens).any(0))) - length}"
            f" on: THIS CONTENDER DOES NOT COMPUTE THE SAME GENERATION !!!")
        print(f"{contender}: {verdict}{difference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 2-layer 128-wide GPT")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    print(blas_threads())
    for name, config in CONFIGS.items():
        if args.quick and name != "2L-128":
            continue
        run_config(name, config, args.repeats)


if __name__ == "__main__":
    main()
