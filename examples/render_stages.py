"""Draw a 2-layer GPT at each stage: the forward as traced and what each optimisation pass did to it (an index page
with before/after diagrams), the training step (forward + generated backward), and an overview with Adam.

    python examples/render_stages.py          # writes out/diagrams/ (SVG; .png works too)
"""

import numpy as np

import graphgpt
from graphgpt.nn import functional as F

graphgpt.manual_seed(0)
model = graphgpt.nn.GPT(vocab_size=65, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=8)
tokens = np.random.default_rng(0).integers(0, 65, size=(1, 8))

forward = graphgpt.compile(model, tokens)
print("forward, as traced:", forward.render("out/diagrams/forward.svg", stage="input"))
print("every pass over the forward, before and after:", forward.render_passes("out/diagrams/passes"))

train = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy)  # forward and generated backward
print("train step, as generated:", train.render("out/diagrams/train.svg", stage="input"))

with_adam = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=graphgpt.optim.Adam(lr=1e-3))
print("train step with Adam, one box per module:", with_adam.render("out/diagrams/overview.svg", collapse=2))
