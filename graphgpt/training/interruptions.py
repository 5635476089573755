"""What lets a training run stop cleanly: SIGINT and SIGTERM turned into a requested stop at a step boundary
(StopSignals), and the state a step updates in place copied before it, so that the step can be undone
(TrainingState)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

from ..nn import Module
from ..optim import Optimizer


class StopSignals:
    """SIGINT and SIGTERM while training, turned from an abrupt end into a requested stop.

    listening() installs the handlers (in the main thread only: Python delivers signals there) and restores the
    previous ones after. A signal is recorded in `received`; the loop stops at the next step boundary and saves
    a checkpoint. Inside interruptible(n), the n-th signal so far raises KeyboardInterrupt there and then: in a
    step n = 2 (a second Ctrl-C abandons the step, whose state the loop then restores), after the last step n = 1
    (final validation and samples have nothing left to save). Elsewhere (a checkpoint being written) signals
    are only recorded, so a write is never cut short."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[str] = None
        self.count = 0
        self._interrupt_at: Optional[int] = None
        self._interrupted = False

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name
        if self._interrupt_at is not None and self.count >= self._interrupt_at and not self._interrupted:
            self._interrupted = True
            raise KeyboardInterrupt

    @contextmanager
    def listening(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in self.HANDLED}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextmanager
    def interruptible(self, at_signal: int) -> Iterator[None]:
        self._interrupt_at = at_signal
        try:
            yield
        finally:
            self._interrupt_at = None


# The finiteness check copies the state into a scratch of at most this many elements at a time (4 MB of float32),
# a chunk of consecutive tensors per NumPy call: one call per tensor was 0.37 ms of the default GPT's 10 ms step
# (113 tensors), one per chunk 0.1 ms. A tensor larger than a chunk is checked by itself.
CHECK_CHUNK_ELEMENTS = 1 << 20


class TrainingState:
    """The arrays a training step updates in place (the model's parameters and the optimizer's state), copied
    before each step, so that a step can be undone: abandoned by a second signal, or rerun with numerics checks
    after it diverged. The copies of one dtype are views of one array, taken by one NumPy call; the check for
    non-finite values after each step goes a chunk of tensors at a time (CHECK_CHUNK_ELEMENTS). On the default
    GPT (113 tensors, 1.4 MB) taking and checking cost ~0.15 ms of a 10 ms step."""

    def __init__(self, model: Module, optimizer: Optimizer):
        self.tensors = {**dict(model.named_parameters()),
                        **{f"optimizer {name}": tensor for name, tensor in optimizer.state.items()}}
        self._names = list(self.tensors)
        self._datas: list[np.ndarray] = []  # the tensors' arrays the flat views below were made of
        self._flats: list[np.ndarray] = []  # each array as one axis (a view where it is contiguous)
        self._copied: list[int] = []  # positions of the arrays whose one-axis form is a copy
        self._chunks: list[tuple[int, int, int]] = []  # (first, end, elements) of each chunk, for the check
        datas = self._current_datas()
        positions_of: dict[np.dtype, list[int]] = {}
        for position, data in enumerate(datas):
            positions_of.setdefault(data.dtype, []).append(position)
        self.saved: dict[str, np.ndarray] = {}
        self._groups: list[tuple[list[int], np.ndarray]] = []  # (positions of the tensors, their joined copies)
        for dtype, positions in positions_of.items():
            copies = np.empty(sum(datas[position].size for position in positions), dtype)
            offset = 0
            for position in positions:
                data = datas[position]
                self.saved[self._names[position]] = copies[offset:offset + data.size].reshape(data.shape)
                offset += data.size
            self._groups.append((positions, copies))
        self._scratch: dict[np.dtype, np.ndarray] = {}  # dtype -> the check's chunk
        self.take()

    def _current_datas(self) -> list[np.ndarray]:
        return [tensor.data for tensor in self.tensors.values()]

    def _flat_views(self) -> list[np.ndarray]:
        """Each tensor's array as one axis: views made again only when a tensor's array was replaced, copies (of
        an array not in C order, which has no such view) made at every call."""
        datas = self._current_datas()
        if len(datas) != len(self._datas) or any(new is not old for new, old in zip(datas, self._datas)):
            self._datas, self._flats = datas, [data.reshape(-1) for data in datas]
            self._copied = [position for position, data in enumerate(datas) if not data.flags.c_contiguous]
            self._chunks = _chunks(datas)
        for position in self._copied:
            self._flats[position] = self._datas[position].reshape(-1)
        return self._flats

    def take(self) -> None:
        flats = self._flat_views()
        for positions, copies in self._groups:
            np.concatenate([flats[position] for position in positions], out=copies)

    def restore(self) -> None:
        for name, tensor in self.tensors.items():
            np.copyto(tensor.data, self.saved[name])

    def first_nonfinite(self) -> Optional[str]:
        """The name of the first parameter or optimizer state holding NaN or infinity, or None."""
        flats = self._flat_views()
        for first, end, size in self._chunks:
            if end - first == 1:
                finite = np.isfinite(flats[first]).all()
            else:
                dtype = flats[first].dtype
                scratch = self._scratch.get(dtype)
                if scratch is None:
                    scratch = self._scratch[dtype] = np.empty(CHECK_CHUNK_ELEMENTS, dtype)
                np.concatenate(flats[first:end], out=scratch[:size])
                finite = np.isfinite(scratch[:size]).all()
            if not finite:
                return next(self._names[position] for position in range(first, end)
                            if not np.isfinite(flats[position]).all())
        return None


def _chunks(arrays: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """(first, end, elements) of runs of consecutive arrays of one dtype of at most CHECK_CHUNK_ELEMENTS elements in
    all (a larger array alone)."""
    chunks: list[tuple[int, int, int]] = []
    for position, array in enumerate(arrays):
        if chunks:
            first, end, size = chunks[-1]
            if arrays[first].dtype == array.dtype and size + array.size <= CHECK_CHUNK_ELEMENTS:
                chunks[-1] = (first, position + 1, size + array.size)
                continue
        chunks.append((position, position + 1, array.size))
    return chunks
