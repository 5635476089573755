"""The course's and torch's model APIs in graphgpt.nn: train/eval, Dropout (seeded, eager and compiled alike),
activations and losses as modules (values against PyTorch and direct formulas), PositionalEncoding, CharTokenizer
and GPT.generate."""

import math

import numpy as np
import pytest

import graphgpt
from graphgpt import nn
from graphgpt.nn import functional as F

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6)).astype(np.float32) * 3


class Net(nn.Module):
    def __init__(self, p=0.5):
        self.linear = nn.Linear(6, 6)
        self.dropout = nn.Dropout(p)

    def forward(self, x):
        return self.dropout(self.linear(x))


def test_train_and_eval_set_every_module_and_return_it():
    model = nn.GPT(vocab_size=7, embed_dim=8, num_layers=2, num_heads=2, max_seq_len=4)
    assert model.eval() is model
    assert all(not module.training for _, module in model.named_modules())
    assert model.train() is model and all(module.training for _, module in model.named_modules())


def test_dropout_drops_with_probability_p_and_scales_the_rest():
    graphgpt.manual_seed(0)
    dropout = nn.Dropout(0.25)
    x = np.ones((200, 50), np.float32)
    y = dropout(x).data
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02  # 10 000 draws: the standard deviation is 0.004
    assert not np.array_equal(dropout(x).data, y)  # the next call draws a new mask


def test_dropout_is_seeded_by_manual_seed():
    graphgpt.manual_seed(5)
    first = [Net()(X).data for _ in range(1)][0]
    graphgpt.manual_seed(5)
    assert np.array_equal(Net()(X).data, first)


def test_dropout_is_the_identity_in_eval_mode_and_when_told_so():
    net = Net()
    expected = net.linear(X).data
    assert np.array_equal(net.dropout(expected, training=False).data, expected)
    assert np.array_equal(nn.Dropout(0.0)(expected).data, expected)
    assert np.array_equal(net.eval()(X).data, expected)
    assert np.all(nn.Dropout(1.0)(expected).data == 0)
    with pytest.raises(ValueError, match="Dropout probability must be a number from 0 to 1, got 1.5"):
        nn.Dropout(1.5)


def test_dropout_in_eval_matches_torch():
    torch = pytest.importorskip("torch")
    net = Net().eval()
    expected = torch.nn.functional.dropout(torch.from_numpy(net.linear(X).data), 0.5, training=False).numpy()
    np.testing.assert_array_equal(net(X).data, expected)


def test_compiled_dropout_draws_what_eager_draws_run_after_run():
    graphgpt.manual_seed(1)
    net = Net()
    start = net.dropout.key.data.copy()
    eager = [net(X).data for _ in range(3)]
    net.dropout.key.data[...] = start
    compiled = graphgpt.compile(net, X)
    runs = [compiled(X) for _ in range(3)]
    for eager_run, compiled_run in zip(eager, runs):
        np.testing.assert_allclose(compiled_run, eager_run, rtol=1e-6)
    assert not np.array_equal(runs[0], runs[1])  # each run advances the key
    assert int(net.dropout.key.data) == int(start) + 3


def test_compiled_training_step_with_dropout_matches_eager():
    graphgpt.manual_seed(2)
    net = Net(p=0.3)
    target = RNG.normal(size=(4, 6)).astype(np.float32)
    start = net.dropout.key.data.copy()
    eager = [F.mse_loss(net(X), target).data for _ in range(2)]
    net.dropout.key.data[...] = start
    step = graphgpt.compile(net, X, target, loss=F.mse_loss)
    np.testing.assert_allclose([step(X, target) for _ in range(2)], eager, rtol=1e-5)
    with pytest.raises(ValueError, match=r"cannot split this training step.*at dropout .*mixes examples of the batch"):
        graphgpt.compile(net, X, target, loss=F.mse_loss, shards=2)


def test_dropout_compiled_outside_its_module_or_after_a_mode_change_is_refused():
    net = Net()
    with pytest.raises(graphgpt.TraceError, match="can advance only the parameters and buffers of the model"):
        graphgpt.compile(lambda x: net.dropout(x), X)
    compiled = graphgpt.compile(net, X)
    net.eval()
    with pytest.raises(graphgpt.ModelChangedError, match="training"):
        compiled(X)


def test_activation_modules_are_their_functions():
    x = graphgpt.Tensor(X)
    np.testing.assert_array_equal(nn.GELU()(x).data, F.gelu(x).data)
    np.testing.assert_array_equal(nn.Softmax()(x).data, F.softmax(x, -1).data)
    np.testing.assert_array_equal(nn.Softmax(dim=0)(x).data, nn.Softmax()(x, dim=0).data)
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-X.astype(np.float64))), rtol=1e-6)
    np.testing.assert_array_equal(nn.ReLU()(x).data, np.where(X > 0, X, 0))
    np.testing.assert_array_equal(nn.Tanh()(x).data, np.tanh(X))


def test_sigmoid_and_relu_values_and_gradients_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([-200.0, -3.0, 0.0, 0.5, 30.0, 200.0], np.float32)
    for ours, theirs in [(F.sigmoid, torch.sigmoid), (F.relu, torch.relu)]:
        mine = graphgpt.Tensor(x, requires_grad=True)
        result = ours(mine)
        (result * np.arange(6, dtype=np.float32)).sum().backward()
        reference = torch.from_numpy(x).requires_grad_()
        (theirs(reference) * torch.arange(6.0)).sum().backward()
        np.testing.assert_allclose(result.data, theirs(torch.from_numpy(x)).numpy(), rtol=1e-6)
        np.testing.assert_allclose(mine.grad, reference.grad.numpy(), rtol=1e-6)  # relu's gradient at 0 is 0


def test_losses_match_direct_formulas():
    prediction = RNG.uniform(0.05, 0.95, size=(3, 4)).astype(np.float32)
    target = (RNG.random((3, 4)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(nn.MSELoss()(prediction, target).data, np.mean((prediction - target) ** 2),
                               rtol=1e-6)
    bce = -np.mean(target * np.log(prediction) + (1 - target) * np.log(1 - prediction))
    np.testing.assert_allclose(nn.BCELoss()(prediction, target).data, bce, rtol=1e-6)
    logits, classes = RNG.normal(size=(5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(nn.CrossEntropyLoss()(logits, classes).data,
                               -log_probabilities[np.arange(5), classes].mean(), rtol=1e-6)
    # probabilities of exactly 0 and 1 give a finite loss: each log clamped at -100
    np.testing.assert_allclose(nn.BCELoss()(np.array([0.0, 1.0], np.float32), np.array([1.0, 0.0], np.float32)).data,
                               100.0)


def test_losses_and_their_gradients_match_torch():
    torch = pytest.importorskip("torch")
    prediction = np.array([[0.0, 0.2, 0.7], [1.0, 0.5, 0.9]], np.float32)
    target = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], np.float32)
    logits, classes = RNG.normal(size=(5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    for ours, theirs, a, b in [
            (nn.MSELoss(), torch.nn.MSELoss(), prediction, target),
            (nn.BCELoss(), torch.nn.BCELoss(), prediction[:, 1:], target[:, 1:]),  # 0 and 1 have no gradient
            (nn.BCELoss(), torch.nn.BCELoss(), prediction, target),
            (nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), logits, classes)]:
        mine = graphgpt.Tensor(a, requires_grad=True)
        loss = ours(mine, b)
        reference = torch.from_numpy(a).requires_grad_()
        expected = theirs(reference, torch.from_numpy(b))
        np.testing.assert_allclose(loss.data, expected.detach().numpy(), rtol=1e-6)
        if np.all((a > 0) & (a < 1)) or isinstance(ours, nn.CrossEntropyLoss):
            loss.backward()
            expected.backward()
            np.testing.assert_allclose(mine.grad, reference.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("embed_dim", [8, 5])
def test_positional_encoding_is_the_sinusoidal_formula(embed_dim):
    encoding = nn.PositionalEncoding(max_seq_len=6, embed_dim=embed_dim)
    expected = np.array([[math.sin(pos / 10000 ** (i / embed_dim)) if i % 2 == 0
                          else math.cos(pos / 10000 ** ((i - 1) / embed_dim)) for i in range(embed_dim)]
                         for pos in range(6)])
    np.testing.assert_allclose(encoding.encoding.data, expected, rtol=1e-6, atol=1e-7)
    x = RNG.normal(size=(2, 4, embed_dim)).astype(np.float32)
    np.testing.assert_array_equal(encoding(x).data, x + encoding.encoding.data[:4])
    assert encoding.parameters() == [] and len(list(encoding.named_buffers())) == 1
    with pytest.raises(ValueError, match="sequence length 7 is longer than max_seq_len 6"):
        encoding(np.zeros((7, embed_dim), np.float32))


def test_char_tokenizer_round_trips_and_maps_unknown_characters_to_zero():
    tokenizer = nn.CharTokenizer.from_text("to be or not")
    assert tokenizer.vocab == ["<UNK>", " ", "b", "e", "n", "o", "r", "t"] and tokenizer.vocab_size == 8
    assert tokenizer.decode(tokenizer.encode("not to be")) == "not to be"
    assert tokenizer.encode("toxic") == [7, 5, 0, 0, 0]
    assert tokenizer.decode([2, 99]) == "b<UNK>"
    course = nn.CharTokenizer(["h", "e", "l", "o"])
    assert course.encode("hello") == [1, 2, 3, 3, 4]
    course.build_vocab(["ab", "ba c"])
    assert course.vocab == ["<UNK>", " ", "a", "b", "c"]


def test_generate_keeps_the_prompt_and_samples_greedily_with_top_k_1():
    graphgpt.manual_seed(4)
    model = nn.GPT(vocab_size=9, embed_dim=8, num_layers=1, num_heads=2, max_seq_len=16)
    prompt = np.array([[1, 2, 3], [4, 4, 0]])
    generated = model.generate(graphgpt.Tensor(prompt), max_new_tokens=4, top_k=1).data
    assert generated.shape == (2, 7) and generated.dtype == np.int64
    np.testing.assert_array_equal(generated[:, :3], prompt)
    for row in generated:  # each new token is the argmax of the model's logits after the tokens before it
        for position in range(3, 7):
            logits = model(graphgpt.Tensor(row[None, :position])).data[0, -1]
            assert row[position] == np.argmax(logits)
    one = model.generate([5, 6], 3, temperature=0.8, seed=11).data
    assert one.shape == (5,) and np.array_equal(one, model.generate([5, 6], 3, temperature=0.8, seed=11).data)
    with pytest.raises(ValueError, match=r"prompt tokens must lie in 0\.\.8, got values from -1 to 6"):
        model.generate([[-1, 6]], 2)


def test_every_public_name_is_exported():
    for name in nn.__all__:
        assert getattr(nn, name) is not None
    for name in ["relu", "sigmoid", "mse_loss", "binary_cross_entropy", "scaled_dot_product_attention",
                 "create_causal_mask", "causal_mask", "softmax", "gelu", "tanh", "cross_entropy"]:
        assert callable(getattr(F, name)), name


def test_the_course_switch_for_autograd_is_there_and_changes_nothing():
    assert graphgpt.enable_autograd() is None
    x = graphgpt.Tensor(X, requires_grad=True)
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full_like(X, 2.0))


def test_integer_matmul_multiplies_as_torch_does():
    product = graphgpt.Tensor([[1, 2], [3, 4]]) @ graphgpt.Tensor([[5, 6], [7, 8]])
    assert product.dtype == np.int64
    np.testing.assert_array_equal(product.data, [[19, 22], [43, 50]])


def test_transformer_block_dropout_is_the_course_option_and_off_in_eval():
    graphgpt.manual_seed(5)
    block = nn.TransformerBlock(6, 2, dropout_prob=0.5)
    x = graphgpt.Tensor(RNG.normal(size=(2, 3, 6)))
    without_dropout = x + block.attention(block.ln1(x))
    without_dropout = without_dropout + block.mlp(block.ln2(without_dropout))
    assert not np.array_equal(block(x).data, without_dropout.data)  # half of each branch dropped
    np.testing.assert_array_equal(block.eval()(x).data, without_dropout.data)
    assert not hasattr(nn.TransformerBlock(6, 2), "attention_dropout")  # graphgpt's GPT: no dropout modules


def test_softmax_takes_dim_as_torch_and_the_course_name_the_axis():
    x = graphgpt.Tensor(X)
    np.testing.assert_array_equal(F.softmax(x, dim=0).data, F.softmax(x, 0).data)
    np.testing.assert_array_equal(F.log_softmax(x, dim=-1).data, F.log_softmax(x, -1).data)
