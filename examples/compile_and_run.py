"""Compile a small GPT, print its graph, run it, and check the compiled result against eager execution.

    python examples/compile_and_run.py
"""

import numpy as np

import graphgpt

graphgpt.manual_seed(0)
model = graphgpt.nn.GPT(vocab_size=65, embed_dim=32, num_layers=2, num_heads=4, max_seq_len=16)
tokens = np.random.default_rng(0).integers(0, 65, size=(2, 16))

fwd = graphgpt.compile(model, tokens)
print(fwd.graph)

logits = fwd.run(tokens)                     # runs the graph; no retrace for new tokens of this shape
eager = model(graphgpt.Tensor(tokens)).data  # the same model, op by op
print("logits", logits.shape, logits.dtype, "max |compiled - eager| =", float(np.abs(logits - eager).max()))

more_tokens = np.random.default_rng(1).integers(0, 65, size=(2, 16))
print("second batch, same graph:", fwd(more_tokens).shape)
