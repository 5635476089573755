"""Compiled generation with a static KV cache (graphgpt/generation.py, graphgpt/nn/kv_cache.py): the cached
forward against the full one, eagerly and compiled; the decode graph's in-place cache updates; greedy and sampled
tokens with and without the cache; the window sliding past max_seq_len; several threads; the course's KVCache
bookkeeping; bad input."""

from __future__ import annotations

import copy
import gc
import threading
import warnings
import weakref

import numpy as np
import pytest

import graphgpt
from graphgpt import Tensor
from graphgpt.generation import compile_generation
from graphgpt.nn import GPT
from graphgpt.nn.kv_cache import KVCache


def small_gpt(max_seq_len=16, seed=0) -> GPT:
    graphgpt.manual_seed(seed)
    return GPT(vocab_size=65, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=max_seq_len)


def full_logits(model, tokens) -> np.ndarray:
    with graphgpt.no_grad():
        return model(Tensor(tokens)).data


def test_eager_cached_forward_equals_the_full_forward():
    model = small_gpt()
    tokens = np.random.default_rng(1).integers(0, 65, (2, 12))
    reference = full_logits(model, tokens)
    cache = KVCache.for_model(model, batch_size=2)
    with graphgpt.no_grad():
        prefill = model(Tensor(tokens[:, :7]), np.zeros(2, np.int64), cache).data
        np.testing.assert_allclose(prefill, reference[:, :7], rtol=1e-5, atol=1e-5)
        for position in range(7, 12):  # one token at a time, the cache holding the rest
            step = model(Tensor(tokens[:, position:position + 1]), np.full(2, position, np.int64), cache).data
            np.testing.assert_allclose(step[:, 0], reference[:, position], rtol=1e-5, atol=1e-5)
    assert not np.any(cache.data[:, :, :, :, 12:])  # nothing written past the last position


def test_compiled_prefill_and_decode_equal_the_full_forward_and_update_the_cache_in_place():
    model = small_gpt()
    generation = compile_generation(model, batch=2)
    tokens = np.random.default_rng(2).integers(0, 65, (2, 12))
    reference = full_logits(model, tokens)
    np.testing.assert_allclose(generation.prefill_logits(tokens[:, :5]), reference[:, 4], rtol=1e-5, atol=1e-5)
    for position in range(5, 12):
        np.testing.assert_allclose(generation.decode_logits(tokens[:, position], position), reference[:, position],
                                   rtol=1e-5, atol=1e-5)
    decode = generation.decode
    graph = decode.graph
    assert [node.op for node in graph.nodes].count("cache_write") == 2 * model.num_layers
    assert sorted(parameter.name for parameter, _ in graph.updates) == sorted(
        name for name, _ in generation.cache.named_tensors())
    # Every cache write is computed straight into the cache's array: no copy of the cache per token.
    assert decode.program.graphs[0].plan.updates_in_place == 2 * model.num_layers
    assert [value.name for value in graph.inputs] == ["tokens", "positions"]
    assert "cache_write %kv_cache.blocks.0.keys" in str(graph)
    assert "== decode ==" in decode.report()


def test_the_decode_graph_renders(tmp_path):
    generation = compile_generation(small_gpt())
    path = generation.decode.render(str(tmp_path / "decode.svg"))
    assert "cache_write" in open(path, encoding="utf-8").read()


def test_greedy_tokens_with_and_without_the_cache_are_identical_for_200_steps():
    model = small_gpt(max_seq_len=256)
    prompt = np.random.default_rng(3).integers(0, 65, (1, 16))
    cached = model.generate(prompt, 200, top_k=1, seed=0).data
    uncached = model.generate(prompt, 200, top_k=1, seed=0, use_cache=False).data
    np.testing.assert_array_equal(cached, uncached)
    # The logits each token was drawn from, against one full forward of the sequence (causal: position t's
    # logits are those of the context up to t).
    generation = compile_generation(model)
    reference = full_logits(model, cached[:, :-1])
    decoded = [generation.prefill_logits(cached[:, :16])[0]]
    decoded += [generation.decode_logits(cached[:, position], position)[0] for position in range(16, 215)]
    np.testing.assert_allclose(np.array(decoded), reference[0, 15:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k,temperature", [(0, 1.0), (5, 0.8)])
def test_sampled_tokens_with_and_without_the_cache_are_identical(top_k, temperature):
    model = small_gpt(max_seq_len=64)
    prompt = np.random.default_rng(4).integers(0, 65, (3, 6))
    cached = model.generate(prompt, 40, temperature=temperature, top_k=top_k, seed=11).data
    uncached = model.generate(prompt, 40, temperature=temperature, top_k=top_k, seed=11, use_cache=False).data
    np.testing.assert_array_equal(cached, uncached)
    assert not np.array_equal(cached[0, 6:], cached[1, 6:])  # each sequence draws with its own seed


def test_generating_past_max_seq_len_slides_the_window_and_says_so():
    model = small_gpt(max_seq_len=16)
    prompt = np.random.default_rng(5).integers(0, 65, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = model.generate(prompt, 20, top_k=3, seed=2).data
    assert [str(w.message) for w in caught] == [
        "the context passed max_seq_len 16: each further token recomputes the window of the last 16 tokens "
        "(positions shift, so no cached key stays valid)"]
    assert caught[0].filename == __file__  # pointed at the caller's line
    np.testing.assert_array_equal(cached, model.generate(prompt, 20, top_k=3, seed=2, use_cache=False).data)
    assert cached.shape == (30,)


def test_a_prompt_longer_than_the_context_is_cut_to_its_last_tokens_with_a_warning():
    model = small_gpt(max_seq_len=16)
    prompt = np.random.default_rng(6).integers(0, 65, (1, 25))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = model.generate(prompt, 4, top_k=1, seed=0).data
        alone = model.generate(prompt[:, -16:], 4, top_k=1, seed=0).data  # the same as a prompt of the last 16
    assert [str(w.message).split(":")[0] for w in caught] == [
        "the prompt has 25 tokens, more than the model's max_seq_len 16", "the context passed max_seq_len 16",
        "the context passed max_seq_len 16"]
    np.testing.assert_array_equal(cached[:, :25], prompt)
    np.testing.assert_array_equal(cached[:, 25:], alone[:, 16:])


def test_generations_from_several_threads_equal_each_alone():
    model = small_gpt(max_seq_len=32)
    prompts = [np.random.default_rng(seed).integers(0, 65, (1, 5)) for seed in range(4)]
    expected = [model.generate(prompt, 20, top_k=0, seed=index).data for index, prompt in enumerate(prompts)]
    results: dict[int, list] = {}

    def worker(index):
        results[index] = [model.generate(prompts[index], 20, top_k=0, seed=index).data for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, outputs in results.items():
        for output in outputs:
            np.testing.assert_array_equal(output, expected[index])


def test_generation_follows_the_model_after_its_weights_change():
    model = small_gpt()
    prompt = np.arange(4).reshape(1, 4)
    before = model.generate(prompt, 8, top_k=1, seed=0).data
    model.lm_head.weight = graphgpt.Parameter(-model.lm_head.weight.data)  # rebound: the graphs find it again
    after = model.generate(prompt, 8, top_k=1, seed=0).data
    np.testing.assert_array_equal(after, model.generate(prompt, 8, top_k=1, seed=0, use_cache=False).data)
    assert not np.array_equal(before, after)


def test_the_course_kv_cache_interface():
    cache = KVCache(batch_size=1, max_seq_len=4, num_layers=2, num_heads=2, head_dim=3)
    assert cache.data.shape == (2, 2, 1, 2, 4, 3) and cache.nbytes == cache.data.nbytes
    key, value = np.ones((1, 2, 1, 3), np.float32), np.full((1, 2, 1, 3), 2.0, np.float32)
    for layer in range(2):
        cache.update(layer, Tensor(key), Tensor(value))
    cache.advance()
    keys, values = cache.get(1)
    assert keys.shape == (1, 2, 1, 3) and np.all(keys.data == 1) and np.all(values.data == 2)
    for _ in range(3):
        cache.advance()
    with pytest.raises(ValueError, match="the KV cache is full: all 4 positions are written"):
        cache.update(0, Tensor(key), Tensor(value))
    cache.reset()
    assert cache.seq_pos == 0 and not cache.data.any()
    with pytest.raises(ValueError, match="KVCache num_heads must be a whole number of at least 1, got 0"):
        KVCache(1, 4, 2, 0, 3)


def test_bad_generation_input_is_refused_in_one_line():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"prompt tokens must lie in 0\.\.64, got values from 0 to 70"):
        model.generate(np.array([0, 70]), 3)
    with pytest.raises(ValueError, match=r"integer prompt tokens of shape \(batch, T\) or \(T,\), T >= 1"):
        model.generate(np.array([0.5, 1.0]), 3)
    with pytest.raises(graphgpt.training.corpus.DataError, match="temperature must be a finite number above 0"):
        model.generate(np.array([1, 2]), 3, temperature=0.0)
    with pytest.raises(ValueError, match="give positions and cache together"):
        model(Tensor(np.zeros((1, 2), np.int64)), np.zeros(1, np.int64))
    generation = compile_generation(model)
    with pytest.raises(graphgpt.ExecutionError, match=r"\(embedding\) at position_embedding .* embedding index 16 is "
                                                      r"out of range for a table of 16 rows"):
        generation.decode_logits(np.array([1]), 16)  # past the cache: the position has no embedding
    with pytest.raises(graphgpt.training.corpus.DataError, match="temperature must be a finite number above 0"):
        generation.generate(np.array([[1, 2]]), 3, temperature=-1.0)
    with pytest.raises(graphgpt.training.corpus.DataError, match="length must be a whole number, 0 or more, got -2"):
        generation.generate(np.array([[1, 2]]), -2)
    with pytest.raises(ValueError, match=r"expected integer prompts of shape \(1, T >= 1\), got int64 \[2, 2\]"):
        generation.generate(np.array([[1, 2], [3, 4]]), 3)
    with pytest.raises(ValueError, match="batch must be a whole number of sequences, at least 1, got 0"):
        compile_generation(model, batch=0)
    with pytest.raises(TypeError, match="compile_generation takes a GPT .*; Linear has no max_seq_len, num_layers"):
        compile_generation(graphgpt.nn.Linear(4, 4))


def test_prompts_are_padded_to_a_few_lengths_each_one_graph_compiled_on_first_use():
    assert compile_generation(small_gpt(max_seq_len=100)).prefill_lengths == [16, 32, 64, 100]
    assert compile_generation(small_gpt(max_seq_len=8)).prefill_lengths == [8]
    model = small_gpt(max_seq_len=64)
    generation = compile_generation(model)
    tokens = np.random.default_rng(7).integers(0, 65, (1, 40))
    reference = full_logits(model, tokens)
    for length, padded in ((3, 16), (16, 16), (17, 32), (40, 64)):
        np.testing.assert_allclose(generation.prefill_logits(tokens[:, :length]), reference[:, length - 1],
                                   rtol=1e-5, atol=1e-5)
        assert generation.prefill_for(length).input_types[0].shape == (1, padded)
    assert sorted(generation._prefills) == [16, 32, 64]  # each compiled once, when a prompt first needed it


def test_kept_generations_live_and_die_with_their_model_and_disturb_no_other_compile():
    model = small_gpt()
    forward = graphgpt.compile(model, np.zeros((1, 4), np.int64))
    before = forward(np.arange(4).reshape(1, 4))
    model.generate(np.arange(3), 2, top_k=1, seed=0)  # compiles and keeps the model's generation
    np.testing.assert_array_equal(forward(np.arange(4).reshape(1, 4)), before)  # the forward still runs
    twin = copy.deepcopy(model)  # a copy starts without the kept graphs (they belong to the model)
    np.testing.assert_array_equal(twin.generate(np.arange(3), 5, top_k=1, seed=0).data,
                                  model.generate(np.arange(3), 5, top_k=1, seed=0).data)
    alive = weakref.ref(model)
    del model, forward, twin
    gc.collect()
    assert alive() is None  # nothing outside the model keeps it (or its compiled graphs) alive
