"""Golden text IR: the printer's exact output for a small model as traced, so any change to names, types, attributes or
provenance in the text form is seen in review. Regenerate with GRAPHGPT_UPDATE_GOLDEN=1 after a deliberate change.

The model is defined in this file (not graphgpt.nn) so its source lines only move when this file does."""

import os
from pathlib import Path

import numpy as np

import graphgpt
from graphgpt import nn
from graphgpt.nn import functional as F


class Scale(nn.Module):
    def __init__(self, width):
        self.gain = nn.Parameter(np.full(width, 2.0, np.float32))

    def forward(self, x):
        return x * self.gain


class TinyModel(nn.Module):
    def __init__(self):
        self.table = nn.Parameter(np.arange(12, dtype=np.float32).reshape(6, 2))
        self.scale = Scale(2)

    def forward(self, tokens, targets):
        x = F.embedding(self.table, tokens)             # (B, T, 2)
        x = self.scale(x) + 1.0
        logits = x @ self.table.transpose(0, 1)         # (B, T, 6)
        probs = F.softmax(logits[:, -1], axis=-1)
        return F.cross_entropy(logits, targets), probs.sum(axis=-1, keepdims=True)


GOLDEN = Path(__file__).parent / "golden" / "tiny_model.txt"


def test_text_ir_matches_golden():
    tokens = np.array([[0, 5, 2]])
    targets = np.array([[1, 2, 3]])
    text = str(graphgpt.compile(TinyModel(), tokens, targets, passes=[]).graph) + "\n"
    if os.environ.get("GRAPHGPT_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_format_without_source_drops_only_file_lines():
    graph = graphgpt.compile(TinyModel(), np.array([[0, 5, 2]]), np.array([[1, 2, 3]])).graph
    plain = graphgpt.ir.format_graph(graph, show_source=False)
    assert "test_golden.py" not in plain and "# scale" in plain
    assert len(plain.splitlines()) == len(str(graph).splitlines())
