"""The hand-written KV-cache decoders of benchmarks/generation.py compute graphgpt's GPT exactly: step by step,
their greedy tokens and the logits each token was chosen from equal graphgpt's eager forward of the whole context,
so the generation benchmark compares like with like."""

import os
import sys

import numpy as np
import pytest

import graphgpt
from conftest import make_gpt, make_tokens

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from generation import make_torch_kv_generate, numpy_kv_generate  # noqa: E402

VOCAB, EMBED, LAYERS, HEADS, MAX_SEQ_LEN, STEPS = 11, 16, 2, 2, 32, 10


def eager_greedy(model, prompt: np.ndarray, steps: int):
    """Greedy decoding recomputing the whole context each step: (tokens, logits (steps, B, vocab))."""
    tokens, step_logits = prompt, []
    with graphgpt.no_grad():
        for _ in range(steps):
            logits = model(graphgpt.Tensor(tokens)).data[:, -1]
            step_logits.append(logits)
            tokens = np.concatenate([tokens, logits.argmax(-1)[:, None]], axis=1)
    return tokens, np.stack(step_logits)


@pytest.fixture
def tiny_gpt_and_prompt():
    return make_gpt(VOCAB, EMBED, LAYERS, HEADS, max_seq_len=MAX_SEQ_LEN), make_tokens(VOCAB, 2, 5)


def test_numpy_kv_decoder_matches_eager_forward(tiny_gpt_and_prompt):
    model, prompt = tiny_gpt_and_prompt
    expected_tokens, expected_logits = eager_greedy(model, prompt, STEPS)
    tokens, logits = numpy_kv_generate(model.state_dict(), prompt, STEPS, HEADS)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-5)


def test_numpy_kv_decoder_refuses_to_run_past_the_context(tiny_gpt_and_prompt):
    model, prompt = tiny_gpt_and_prompt
    with pytest.raises(ValueError, match="exceeds max_seq_len 32"):
        numpy_kv_generate(model.state_dict(), prompt, MAX_SEQ_LEN, HEADS)


def test_torch_kv_decoder_matches_eager_forward(tiny_gpt_and_prompt):
    pytest.importorskip("torch")
    model, prompt = tiny_gpt_and_prompt
    expected_tokens, expected_logits = eager_greedy(model, prompt, STEPS)
    tokens, logits = make_torch_kv_generate(model.state_dict(), HEADS)(prompt, STEPS)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-5)
