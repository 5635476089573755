"""Compiled generation with a static KV cache: a prefill graph and a decode graph over one cache held as graph
state (graphgpt/nn/kv_cache.py), and the sampling loop that drives them.

    gen = graphgpt.compile_generation(model, batch=1)
    tokens = gen.generate(prompt_tokens, max_new_tokens=200, temperature=0.8, top_k=10, seed=0)  # (batch, T + 200)
    print(gen.decode.graph)            # the decode step's graph: one token per sequence and its position in

- **prefill** takes a prompt padded to the next of a few lengths (16, 32, 64, ... max_seq_len) at positions 0..,
  fills every layer's keys and values into the cache and returns the logits of every position. Padded, not
  symbolic: each padded length is one static graph, compiled on first use and kept (at most log2(max_seq_len)
  of them), where symbolic sizes would specialise (plan and schedule) again for every new prompt length; the
  causal mask keeps the padding out of every real position's result, so padding changes nothing but the cost, at
  most twice the prompt's forward. The whole window's graph recomputes the window when generation slides past
  max_seq_len.
- **decode** takes one token per sequence and its position, writes its keys and values into the cache in place
  (`cache_write` nodes whose results are graph updates of the cache) and attends over the whole cache, masking
  the positions after its own; it returns the logits, (batch, 1, vocab_size).

Both are ordinary `Compiled` objects: they print, render, report and export like any other.

The cache has a fixed length, max_seq_len, as the model's learned position embeddings do. Generating past it
slides the window: with absolute positions every position of the window shifts, so no cached key stays valid and
each further token recomputes the window of the last max_seq_len tokens with the prefill graph (said once, in a
note), exactly as the uncached path conditions on it.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

from .compiler import Compiled
from .guards import BindingGuard, ModelChangedError
from .nn.kv_cache import KVCache
from .trace_entry import module_tensors, trace
from .training.sampling import check_prompt, check_sampling, next_token
from graphgpt.passes import infer_shapes
from graphgpt.passes.program_build import build_forward_program


class CompiledGeneration:
    """A GPT's prefill and decode graphs for `batch` sequences at a time, over one KV cache of its own.

    generate() holds a lock for a whole generation: the cache is the state of one generation at a time, so
    generations from several threads take turns (each thread's tokens are what it would get alone)."""

    def __init__(self, model, batch: int = 1, passes=None, fast_math=False, backend=None):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a whole number of sequences, at least 1, got {batch!r}")
        missing = [name for name in ("max_seq_len", "num_layers", "num_heads", "embed_dim") if not hasattr(model, name)]
        if missing:
            raise TypeError(f"compile_generation takes a GPT (graphgpt.nn.GPT, or a model with its attributes and "
                            f"forward(tokens, positions, cache)); {type(model).__name__} has no {', '.join(missing)}")
        self.model = model
        self.batch = int(batch)
        self.window = model.max_seq_len
        self.cache = KVCache.for_model(model, self.batch)
        self._lock = threading.Lock()  # one generation at a time: the cache is its state
        self._compile_lock = threading.Lock()  # one thread compiles a missing prefill graph
        self._options = (passes, fast_math, backend)
        self._prefills: dict[int, Compiled] = {}  # padded length -> its prefill graph, compiled on first use
        self.decode = self._compile(1)

    @property
    def prefill_lengths(self) -> list[int]:
        """The lengths a prompt is padded to: powers of two from 16, then max_seq_len."""
        lengths = [length for length in (1 << shift for shift in range(4, self.window.bit_length()))
                   if length < self.window]
        return lengths + [self.window]

    @property
    def prefill(self) -> Compiled:
        """The prefill graph of a whole window (max_seq_len tokens)."""
        return self.prefill_for(self.window)

    def prefill_for(self, length: int) -> Compiled:
        """The prefill graph a prompt of `length` tokens runs: that of the shortest padded length holding it."""
        padded = next(size for size in self.prefill_lengths if size >= length)
        with self._compile_lock:
            if padded not in self._prefills:
                self._prefills[padded] = self._compile(padded)
            return self._prefills[padded]

    def _compile(self, length: int) -> Compiled:
        def step(tokens, positions):
            return self.model(tokens, positions, self.cache)

        named = [*module_tensors(self.model), *self.cache.named_tensors()]
        tokens, positions = np.zeros((self.batch, length), np.int64), np.zeros(self.batch, np.int64)
        traced = trace(step, tokens, positions, named_parameters=named, input_names=["tokens", "positions"])
        passes, fast_math, backend = self._options
        name = "decode" if length == 1 else f"prefill ({length} tokens)"
        program = build_forward_program(infer_shapes(traced.graph), passes, fast_math=fast_math, backend=backend,
                                        name=name)
        cache_names = {name for name, _ in self.cache.named_tensors()}
        return Compiled(program, traced.bindings, traced.returns_tuple,
                        BindingGuard(self.model, program.param_names, own_state=cache_names))

    def prefill_logits(self, context: np.ndarray) -> np.ndarray:
        """Fill the cache from `context` (batch, T) at positions 0..T-1, T <= max_seq_len; the logits of its
        last position, (batch, vocab_size)."""
        with self._lock:
            return self._prefill(np.asarray(context, np.int64))

    def decode_logits(self, tokens: np.ndarray, position: int) -> np.ndarray:
        """The logits (batch, vocab_size) of one new token per sequence at `position`, the cache holding every
        earlier position; writes the token's keys and values into the cache."""
        with self._lock, self.decode.runs() as decode:
            return self._decode(decode, np.asarray(tokens, np.int64), position).copy()

    def _prefill(self, context: np.ndarray) -> np.ndarray:
        length = context.shape[1]
        compiled = self.prefill_for(length)
        padded = np.zeros((self.batch, compiled.input_types[0].shape[1]), np.int64)
        padded[:, :length] = context
        with compiled.runs() as prefill:
            return prefill(padded, np.zeros(self.batch, np.int64))[0][:, length - 1].copy()

    def _decode(self, decode, tokens: np.ndarray, position: int) -> np.ndarray:
        return decode(tokens.reshape(self.batch, 1), np.full(self.batch, position, np.int64))[0][:, 0]

    def generate(self, prompts: np.ndarray, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0, note: Optional[Callable[[str], None]] = None) -> np.ndarray:
        """`prompts` (batch, T) integers followed by max_new_tokens tokens each, drawn by next_token (top_k 0:
        all; 1: greedy), sequence i with its own generator seeded seed + i: the tokens the uncached eager path
        draws with those seeds. A prompt longer than max_seq_len conditions on its last max_seq_len tokens.
        `note` is told, once, when the generation slides past the window. Bad settings are refused as
        sampling.check_sampling says."""
        check_sampling(max_new_tokens, temperature, top_k, seed)
        prompts = np.asarray(prompts)
        if prompts.ndim != 2 or prompts.shape[0] != self.batch or prompts.shape[1] < 1 or \
                prompts.dtype.kind not in "iu":
            raise ValueError(f"expected integer prompts of shape ({self.batch}, T >= 1), got {prompts.dtype} "
                             f"{list(prompts.shape)}")
        generators = [np.random.default_rng(seed + row) for row in range(self.batch)]
        tokens = np.empty((self.batch, prompts.shape[1] + max_new_tokens), np.int64)
        tokens[:, :prompts.shape[1]] = prompts
        length = prompts.shape[1]
        if not max_new_tokens:
            return tokens
        # One lock and one parameter binding for the whole generation, not one per token (Compiled.runs).
        with self._lock, self.decode.runs() as decode:
            logits = self._prefill(tokens[:, max(length - self.window, 0):length])
            slid = False
            for step in range(max_new_tokens):
                tokens[:, length] = [next_token(row, temperature, top_k, generator)
                                     for row, generator in zip(logits, generators)]
                length += 1
                if step == max_new_tokens - 1:
                    break
                if length <= self.window:
                    logits = self._decode(decode, tokens[:, length - 1], length - 1)
                else:
                    if not slid and note is not None:
                        note(f"the context passed max_seq_len {self.window}: each further token recomputes the "
                             f"window of the last {self.window} tokens (positions shift, so no cached key stays "
                             f"valid)")
                    slid = True
                    logits = self._prefill(tokens[:, length - self.window:length])
        return tokens


def compile_generation(model, batch: int = 1, passes=None, fast_math=False, backend=None) -> CompiledGeneration:
    """Compile a GPT's prefill and decode graphs over a KV cache of its own for `batch` sequences (see
    CompiledGeneration); `passes`, `fast_math` and `backend` as for graphgpt.compile."""
    return CompiledGeneration(model, batch, passes, fast_math, backend)


def sample_text(generation: CompiledGeneration, vocabulary, prompt: str, length: int, temperature: float = 1.0,
                top_k: int = 0, seed: int = 0, note: Optional[Callable[[str], None]] = None) -> str:
    """`prompt` followed by `length` characters sampled through `generation` (batch 1): the text
    graphgpt.training.sampling.sample gives for these arguments, from the cached decode graph."""
    tokens = generation.generate(check_prompt(prompt, vocabulary).reshape(1, -1), length, temperature, top_k,
                                 seed, note)
    return vocabulary.decode(tokens[0].tolist())


class _KeptGenerations:
    """GPT.generate's compiled generations of one model, by batch, kept in the model's own attributes so they live
    and die with it (a table keyed by model would keep every model alive: its values reference the model). A copy
    of the model, or its pickle, starts without them: they belong to the model they were compiled for, and hold
    locks that cannot be copied."""

    def __init__(self):
        self.by_batch: dict[int, CompiledGeneration] = {}
        self.lock = threading.Lock()

    def __copy__(self) -> "_KeptGenerations":
        return _KeptGenerations()

    def __deepcopy__(self, memo) -> "_KeptGenerations":
        return _KeptGenerations()

    def __reduce__(self):
        return (_KeptGenerations, ())


def generate_cached(model, prompts: np.ndarray, max_new_tokens: int, temperature: float, top_k: int,
                    seed: int, note: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """GPT.generate's cached path: CompiledGeneration.generate with the model's kept compiled generation for
    this batch, compiled afresh if the model changed in a way its graphs cannot follow (ModelChangedError)."""
    try:
        return _kept_generation(model, prompts.shape[0]).generate(prompts, max_new_tokens, temperature, top_k,
                                                                   seed, note)
    except ModelChangedError:
        return _kept_generation(model, prompts.shape[0], fresh=True).generate(prompts, max_new_tokens, temperature,
                                                                               top_k, seed, note)


def _kept_generation(model, batch: int, fresh: bool = False) -> CompiledGeneration:
    # setdefault is atomic: two threads calling generate first get one table. Set before compiling, so the
    # compiled graphs' watch of the model's attributes includes it.
    kept = vars(model).setdefault("_generations", _KeptGenerations())
    with kept.lock:
        if fresh or batch not in kept.by_batch:
            kept.by_batch[batch] = compile_generation(model, batch)
        return kept.by_batch[batch]
