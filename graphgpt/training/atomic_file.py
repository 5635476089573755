"""Writing a file so that a reader (or a resumed run) sees the old one or the new one whole, never a torn one: the
bytes go to a temporary file beside it, are flushed to disk, and the temporary is renamed over the target. A
temporary left by a writer that was killed mid-write is removed by the next writer of the same file. One place for
the checkpoint, the loss log and the loss curve.

    with atomic_file("run/latest.npz", "wb") as file:
        np.savez(file, **arrays)
"""

from __future__ import annotations

import glob
import os
from contextlib import contextmanager
from typing import IO, Iterator


def temporary_name(path: str) -> str:
    """Where this process writes `path` before renaming it: `.latest.npz.<pid>.tmp` in the same folder."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str, mode: str = "w", **open_options) -> Iterator[IO]:
    """An open temporary file that replaces `path` when the block ends without an error (and is removed if it
    raises)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = temporary_name(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(os.path.basename(path))}.*.tmp")):
        if stale != temporary:  # left by a writer that was killed mid-write: never renamed, never read
            os.remove(stale)
    try:
        with open(temporary, mode, **open_options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    directory = os.open(folder, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
