"""Train a tiny GPT on a sentence with one compiled graph per step (forward, generated backward, Adam update),
then sample from it.

    python examples/train_tiny.py
"""

import numpy as np

import graphgpt
from graphgpt.nn import functional as F

text = "a static graph is traced once and then run many times. " * 20
characters = sorted(set(text))
tokens = np.array([characters.index(c) for c in text])

graphgpt.manual_seed(0)
model = graphgpt.nn.GPT(vocab_size=len(characters), embed_dim=32, num_layers=2, num_heads=4, max_seq_len=32)
rng = np.random.default_rng(0)


def batch(size=8, length=32):
    starts = rng.integers(0, len(tokens) - length - 1, size)
    windows = np.stack([tokens[s:s + length + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


step = graphgpt.compile(model, *batch(), loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=3e-3))
for iteration in range(1, 121):
    loss = step.run(*batch())  # updates the model's parameters in place
    if iteration % 20 == 0:
        print(f"step {iteration}: loss {float(loss):.3f}")

context = [characters.index(c) for c in "a static "]
with graphgpt.no_grad():
    for _ in range(40):  # greedy decoding with the eager model
        logits = model(graphgpt.Tensor(np.array([context[-32:]]))).data[0, -1]
        context.append(int(np.argmax(logits)))
print("".join(characters[i] for i in context))
