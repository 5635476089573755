"""The explorer page: one self-contained HTML file, its styles, scripts (the viewer and the vendored dagre) and
the model (model.py) inline, so it opens from file:// with nothing fetched.

The model goes in gzip-compressed and base64-encoded (the browser's DecompressionStream unpacks it): the text IR
of every node of every stage repeats much, so the 12-layer GPT's training step is ~0.3 MB instead of 1.7 MB.

    write_page(model, "graph.html")
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
from importlib import resources

# The viewer's scripts, in the order they load (each adds to the one namespace `GraphExplorer`).
SCRIPTS = ("vendor/dagre.min.js", "data.js", "layout.js", "draw.js", "panels.js", "main.js")
STYLES = ("explorer.css",)


class ExplorerError(ValueError):
    """What the explorer was asked for cannot be written: a bad path, an unknown graph or stage."""


def _static(name: str) -> str:
    return resources.files("graphgpt.explorer").joinpath("static", name).read_text(encoding="utf-8")


def _inline_script(source: str) -> str:
    """A script's text safe inside <script>: no '</script' can end it early."""
    return source.replace("</script", "<\\/script")


def page_html(model: dict) -> str:
    """The page's text: styles, the model (gzip, base64) and the scripts, all inline."""
    packed = base64.b64encode(gzip.compress(json.dumps(model, separators=(",", ":")).encode("utf-8"),
                                            mtime=0)).decode("ascii")
    styles = "\n".join(_static(name) for name in STYLES)
    scripts = "\n".join(f"<script>\n{_inline_script(_static(name))}\n</script>" for name in SCRIPTS)
    title = html.escape(model.get("title") or "graph explorer")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n"
            f"<style>\n{styles}\n</style></head>\n<body>\n"
            f"<script type=\"application/octet-stream\" id=\"explorer-model\">{packed}</script>\n"
            f"{scripts}\n</body></html>\n")


def write_page(model: dict, path: str) -> str:
    """Write the page to `path` (a file name ending in .html, in a folder that exists); returns the path."""
    path = os.fspath(path)
    if not path.lower().endswith((".html", ".htm")):
        raise ExplorerError(f"explore: expected a file name ending in .html, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExplorerError(f"explore: expected an existing folder for {path!r}, got {folder!r}, which is not one")
    with open(path, "w", encoding="utf-8") as file:
        file.write(page_html(model))
    return path
