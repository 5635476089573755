"""The hand-written NumPy baseline of the benchmark computes graphgpt's GPT exactly: its loss and every gradient
agree with graphgpt's compiled step to float64 precision (so the benchmark compares like with like), and to
float32 precision in float32. So do the training-step benchmark's PyTorch and JAX peers, built as the benchmark
builds them, on its tiny config (torch.compile's contender runs the same forward as the eager one checked here;
compiling it takes a minute here, too long for a test). The kernel benchmark's NumPy alternatives compute what the
kernels do."""

import os
import sys

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F
from conftest import make_gpt, make_tokens

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from baseline_numpy import forward_backward  # noqa: E402
from step_contenders import CONFIGS, build, contender_builders  # noqa: E402


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 2e-4)])
@pytest.mark.parametrize("vocab,embed,layers,heads,batch,seq_len", [(13, 12, 2, 3, 2, 7), (9, 8, 1, 1, 1, 5)])
def test_numpy_baseline_matches_compiled_gradients(dtype, rtol, vocab, embed, layers, heads, batch, seq_len):
    model = make_gpt(vocab, embed, layers, heads, max_seq_len=8).to(dtype)
    tokens, targets = make_tokens(vocab, batch, seq_len), make_tokens(vocab, batch, seq_len, seed=1)
    step = graphgpt.compile(model, tokens, targets, loss=F.cross_entropy)
    loss = step.run(tokens, targets)
    hand_loss, hand_grads = forward_backward(model.state_dict(), tokens, targets, heads)
    assert hand_loss == pytest.approx(float(loss), rel=rtol)
    assert set(hand_grads) == set(step.grads)
    for name, gradient in step.grads.items():
        scale = max(np.abs(gradient).max(), 1e-3)
        np.testing.assert_allclose(hand_grads[name], gradient, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("peer,package", [("torch", "torch"), ("jax", "jax")])
def test_benchmark_peers_compute_the_compiled_step_on_the_tiny_config(peer, package):
    pytest.importorskip(package, reason=f"the training-step benchmark's {peer} peer needs {package}")
    config = CONFIGS["tiny"]
    model, tokens, targets = build(config)
    builders, _ = contender_builders(config, model, tokens, targets)
    reference, contender = builders["compiled"](), builders[peer]()
    loss, grads = reference.outcome(reference.run())
    peer_loss, peer_grads = contender.outcome(contender.run())
    assert peer_loss == pytest.approx(loss, rel=2e-4)
    assert set(peer_grads) == set(grads)
    for name, gradient in grads.items():
        scale = max(np.abs(gradient).max(), 1e-3)
        np.testing.assert_allclose(np.asarray(peer_grads[name]), gradient, rtol=2e-4, atol=2e-4 * scale,
                                   err_msg=name)


def test_kernel_benchmark_compares_each_kernel_with_what_it_replaces(capsys, monkeypatch):
    """benchmarks/kernels.py: its NumPy alternatives compute what our kernels compute, and it prints every row."""
    import kernels
    rng = np.random.default_rng(0)
    g, x = rng.standard_normal((2, 3, 8), dtype=np.float32), rng.standard_normal((2, 3, 8), dtype=np.float32)
    gamma = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(graphgpt.ir.get_op("gelu_grad").evaluate([g, x], {}),
                               kernels.gelu_grad_primitives(g, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(graphgpt.ir.get_op("layer_norm_grad").evaluate([g, x, gamma], {"eps": 1e-5}),
                               kernels.layer_norm_grad_primitives(g, x, gamma, 1e-5), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(sys, "argv", ["kernels.py", "--repeats", "1"])
    kernels.main()
    printed = capsys.readouterr().out
    assert all(name in printed for name in kernels.pairs(rng)) and printed.count("cold") == len(kernels.pairs(rng))
