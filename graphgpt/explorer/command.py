"""`graphgpt view`: the explorer page of a GPT's forward or training step, from the command line.

    graphgpt view --stage train --layers 12 --embed 128 --out step.html

It takes render's model options and defaults (a 2-layer, 16-wide GPT over one sequence of 8 tokens). Every stage
compiles with the default passes, so the page steps through them: `forward` opens the forward as traced, `train`
the training step (forward, generated backward and an AdamW update) as traced, `optimised` that step after the
passes.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

import numpy as np

STAGES = ("forward", "train", "optimised")


def add_view_command(commands, add_model_arguments: Callable, add_shards_argument: Callable,
                     check_stage_arguments: Callable) -> argparse.ArgumentParser:
    """Add the `view` command to the CLI's subparsers; the model options come from the CLI's own helpers."""
    view = commands.add_parser("view", help="write an interactive explorer of a GPT's graph (one HTML page)",
                               description="Write one self-contained HTML page exploring a GPT's graph in the "
                                           "browser: collapsed to modules, expanded on click, each module's "
                                           "backward pass beside it, details and search, and a step per pass. "
                                           "The training step includes an AdamW update.")
    add_model_arguments(view)
    view.add_argument("--stage", choices=STAGES, default="train",
                      help="the graph the page opens on: the forward as traced, the training step as traced, or "
                           "the training step after the passes (default train)")
    add_shards_argument(view, "as compile decides; a split step shows its shard and combine graphs")
    view.add_argument("--out", default="graph.html", type=html_file,
                      help="the page to write, ending in .html (default graph.html)")
    view.set_defaults(handler=command_view, batch=1, seq_len=8, layers=2, embed=16,
                      check=lambda args: check_stage_arguments(args) or check_view_arguments(args))
    return view


def html_file(text: str) -> str:
    """An argparse `type` taking a file name ending in .html."""
    if not text.lower().endswith((".html", ".htm")):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .html, got {text!r}")
    return text


def check_view_arguments(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with --out's folder, or None: the page is written after compiling, so it is checked first."""
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {args.out}: expected a folder to write into, got {folder!r} (missing, or not writable)"
    return None


def command_view(args: argparse.Namespace) -> int:
    import graphgpt
    from graphgpt.nn import functional as F

    graphgpt.manual_seed(args.seed)
    model = graphgpt.nn.GPT(args.vocab, args.embed, args.layers, args.heads, max_seq_len=args.seq_len)
    tokens = np.random.default_rng(args.seed).integers(0, args.vocab, size=(args.batch, args.seq_len))
    if args.stage == "forward":
        compiled = graphgpt.compile(model, tokens)
    else:
        compiled = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=args.shards,
                                    optimizer=graphgpt.optim.AdamW(lr=3e-4))
    print(compiled.explore(args.out, stage=None if args.stage == "optimised" else "traced"))
    return 0
