"""The loss log of `graphgpt train` (loss.csv beside the checkpoint: one row per step with its training loss,
the validation loss where one was measured, the learning rate, ms/step and tokens/s) and the loss curve drawn
from it at the end of a run (loss.svg: training and validation loss against step, graphgpt/svg_chart.py).

Rows reach the file when a checkpoint is written and when the run ends, so the log on disk holds the steps of
the checkpoint beside it: a run that diverges before its first checkpoint leaves nothing behind, and a resumed
run keeps the rows up to its checkpoint's step (later ones, if any, belong to steps it runs again) and appends
its own, so the log and the curve cover the whole run however often it was interrupted.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional, TextIO

from ..svg_chart import line_chart
from .atomic_file import atomic_file

LOSS_LOG = "loss.csv"
LOSS_CURVE = "loss.svg"
COLUMNS = ("step", "train_loss", "validation_loss", "learning_rate", "ms_per_step", "tokens_per_second")


def read_loss_log(path: str) -> list[dict]:
    """The rows of a loss log as numbers (validation_loss None where not measured); ValueError naming the file
    and line for anything else."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if tuple(header or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(COLUMNS)}, got {','.join(header or [])!r:.80}")
        for fields in reader:
            where = f"{path} line {reader.line_num}"
            if len(fields) != len(COLUMNS):
                raise ValueError(f"{where}: expected {len(COLUMNS)} fields, got {len(fields)}")
            try:
                row = {name: (None if name == "validation_loss" and not text else float(text))
                       for name, text in zip(COLUMNS, fields)}
            except ValueError:
                raise ValueError(f"{where}: expected numbers, got {','.join(fields)!r:.80}") from None
            if not row["step"].is_integer() or (rows and row["step"] <= rows[-1]["step"]):
                raise ValueError(f"{where}: step {fields[0]!r:.20} does not follow step {rows[-1]['step']:g}"
                                 if rows else f"{where}: step {fields[0]!r:.20} is not a whole number")
            row["step"] = int(row["step"])
            rows.append(row)
    return rows


class LossLog:
    """Rows added as steps complete and written by flush(). `continue_from`: None starts a new log; a step keeps
    the existing log's rows up to it, or starts anew (saying why on `out`) if the log is missing or is not one
    this module wrote. The first flush rewrites the file (atomically) with the rows kept, later ones append."""

    def __init__(self, path: str, continue_from: Optional[int], out: TextIO):
        self.path = path
        self.kept: list[dict] = []
        self.pending: list[dict] = []
        self.written = False
        if continue_from is not None and os.path.lexists(path):
            try:
                self.kept = [row for row in read_loss_log(path) if row["step"] <= continue_from]
            except (OSError, ValueError) as error:
                out.write(f"cannot continue the loss log ({error}); starting a new one\n")

    @staticmethod
    def _fields(row: dict) -> list[str]:
        validation = row["validation_loss"]
        return [str(row["step"]), repr(row["train_loss"]), "" if validation is None else repr(validation),
                f"{row['learning_rate']:.6g}", f"{row['ms_per_step']:.3f}", f"{row['tokens_per_second']:.1f}"]

    def best_validation_loss(self) -> float:
        """The lowest validation loss of the rows kept from before this run (infinity if none)."""
        return min((row["validation_loss"] for row in self.kept if row["validation_loss"] is not None),
                   default=math.inf)

    def add(self, step: int, train_loss: float, validation_loss: Optional[float], learning_rate: float,
            seconds: float, tokens: int) -> None:
        self.pending.append(dict(
            step=step, train_loss=train_loss, validation_loss=validation_loss, learning_rate=learning_rate,
            ms_per_step=seconds * 1000, tokens_per_second=tokens / seconds if seconds > 0 else 0.0))

    def flush(self) -> None:
        """Write the rows added since the last flush (after a checkpoint is written, and at the end); nothing
        while there is no row at all."""
        if not (self.kept or self.pending):
            return
        if self.written:
            with open(self.path, "a", newline="", encoding="utf-8") as file:
                csv.writer(file).writerows(self._fields(row) for row in self.pending)
        else:
            with atomic_file(self.path, "w", newline="", encoding="utf-8") as file:
                writer = csv.writer(file)
                writer.writerow(COLUMNS)
                writer.writerows(self._fields(row) for row in self.kept + self.pending)
            self.written = True
        self.pending = []


def write_loss_curve(log_path: str, svg_path: str, title: str) -> Optional[str]:
    """Draw the training and validation losses of the log at `log_path` into `svg_path`; None (nothing drawn)
    if there is no log or it has no rows."""
    rows = read_loss_log(log_path) if os.path.lexists(log_path) else []
    if not rows:
        return None
    series = {"train": [(row["step"], row["train_loss"]) for row in rows]}
    validation = [(row["step"], row["validation_loss"]) for row in rows if row["validation_loss"] is not None]
    if validation:  # 'val', as nanoGPT prints it: the chart's legend clips names much longer than 'train'
        series["val"] = validation
    with atomic_file(svg_path, "w", encoding="utf-8") as file:
        file.write(line_chart(series, title=title, x_label="step", y_label="cross-entropy (nats per character)"))
    return svg_path
