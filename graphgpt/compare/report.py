"""The comparison's result: every measurement of one run, the questions' answers, whether the timings' spread says
the machine was busy (or only a few times were noisy), and the terminal table (the HTML page is compare/page.py, drawn from the same object).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Optional

from ..timing import WIDE_SPREAD, Spread
from .agreement import Agreement
from .dynamic_only import DynamicOnly
from .measurement import COMPILED, EAGER, REMAT, Measurement, describe_config, mib
from .payoff import Payoff
from .static_only import StaticOnly
from .time_per_op import TimePerOp

CONTENDERS = (EAGER, COMPILED, REMAT)
NAMES = {EAGER: "eager tape", COMPILED: "compiled", REMAT: "rematerialised"}
QUESTIONS = {"where-time-goes": "Where does the time go?", "payoff": "When does compiling pay off?",
             "static-only": "What can only the static graph do?",
             "dynamic-only": "What can only the dynamic tape do?", "agreement": "Do they agree?"}
STATIC_ONLY = {"memory-plan": "memory planned ahead", "rewrites": "rewrites, by pass",
               "kernels": "fusion and generated kernels", "split": "the data-parallel split, proved from the graph",
               "remat": "rematerialisation under a budget", "shape-errors": "shape errors found before running"}
# The machine was busy when more than this share of the times spread wide together; fewer wide times are noisy
# contenders (the split step's threads, say), named in a note. Measured: in quiet spells 1 to 8 of the 30 times
# were wide; when something else ran, 12 to 29.
BUSY_SHARE = 0.25
SPREAD_RULE = (f"Times are medians of interleaved runs with their interquartile range [first-third quartile]. A "
               f"time whose range is more than {WIDE_SPREAD:.0%} of its median spread wide; when more than "
               f"{BUSY_SHARE:.0%} of the times spread wide, the machine was busy while they were measured, and the "
               f"report says so.")


@dataclass
class Run:
    """The conditions of the run, for the reader to judge its times."""

    repeats: int
    cores: int
    load_before: float   # one-minute load average
    load_after: float
    seconds: float
    max_rss_bytes: int   # the process's peak resident memory, everything included

    def describe(self) -> str:
        return (f"{self.repeats} interleaved runs per time; {self.cores} cores, load average {self.load_before:.2f} "
                f"before and {self.load_after:.2f} after; the whole comparison took {self.seconds:.0f} s and at "
                f"most {self.max_rss_bytes / 2**20:.0f} MiB of resident memory (RSS)")


def size_label(measured: Measurement, label: str) -> str:
    """'1 layer', '4 layers', '16 tokens': the size a series varies."""
    count = measured.config[label]
    return f"{count} {'layer' if label == 'layers' else 'token'}{'s' * (count != 1)}"


@dataclass
class Report:
    base: Measurement
    by_layers: list
    by_length: list
    time_per_op: TimePerOp
    payoff: Payoff
    static_only: StaticOnly
    dynamic_only: DynamicOnly
    agreement: Agreement
    run: Run
    graphs: dict = field(default_factory=dict, repr=False)  # what write_html draws: name -> Compiled or Graph

    def spreads(self) -> dict[str, Spread]:
        """Every time the report shows, by a name a reader recognises."""
        named = {f"{NAMES[contender]} step": self.base.times[contender] for contender in CONTENDERS}
        for label, series in (("layers", self.by_layers), ("seq_len", self.by_length)):
            for measured in series:
                named.update({f"{NAMES[contender]} step at {size_label(measured, label)}": measured.times[contender]
                              for contender in CONTENDERS})
        named.update(self.payoff.spreads())
        named.update(self.static_only.spreads())
        return named

    def wide_times(self) -> list[tuple[str, Spread]]:
        """The times that spread wide (timing.WIDE_SPREAD), widest first."""
        wide = [(name, spread) for name, spread in self.spreads().items() if spread.wide]
        return sorted(wide, key=lambda item: -item[1].relative)

    def _wide_names(self, most: int = 4) -> str:
        return ", ".join(f"{name} {spread.relative:.0%}" for name, spread in self.wide_times()[:most])

    def busy_warning(self) -> Optional[str]:
        """A warning that the machine was busy, when more than BUSY_SHARE of the times spread wide; else None."""
        wide, count = self.wide_times(), len(self.spreads())
        if len(wide) <= BUSY_SHARE * count:
            return None
        return (f"The machine was busy: {len(wide)} of {count} times spread by more than {WIDE_SPREAD:.0%} of their "
                f"median (interquartile range / median: {self._wide_names()}). Read these times as rough; run "
                f"again on an idle machine to compare them.")

    def spread_note(self) -> Optional[str]:
        """When a few times spread wide but not enough to call the machine busy: which, to read as rough."""
        wide = self.wide_times()
        if not wide or self.busy_warning():
            return None
        return (f"{len(wide)} of {len(self.spreads())} times spread by more than {WIDE_SPREAD:.0%} of their median "
                f"({self._wide_names()}): read those as rough.")

    def figure_rows(self) -> list[tuple[str, str, str, str]]:
        """(what, eager tape, compiled, rematerialised) of the base size: work, time, and the three named memory
        measures (measurement.py), as the table and the page both show them."""
        b = self.base

        def cells(get) -> tuple[str, ...]:
            return tuple(get(contender) for contender in CONTENDERS)

        return [("ops run per step / graph nodes", f"{b.eager_ops} run, {b.tape_nodes} on tape",
                 f"{b.graph_nodes} traced, {b.optimised_nodes} optimised", f"{b.remat_nodes} nodes"),
                ("step time, ms [quartiles]", *cells(lambda c: str(b.times[c]).replace(" ms", ""))),
                ("planned buffers (allocated once)", *cells(lambda c: mib(b.planned_bytes.get(c)))),
                ("  live at the timeline's peak", "-", mib(b.timeline.peak_bytes), "-"),
                ("traced during a step (tracemalloc)", *cells(lambda c: mib(b.traced_bytes[c]))),
                ("footprint: planned + traced", *cells(lambda c: mib(b.footprint(c))))]

    def table(self) -> str:
        b = self.base
        lines = [f"{describe_config(b.config)}: eager tape vs compiled graph",
                 f"{'':36} {'eager tape':>24} {'compiled':>28} {'rematerialised':>20}"]
        lines += [f"{what:36} {eager:>24} {compiled:>28} {remat:>20}"
                  for what, eager, compiled, remat in self.figure_rows()]
        lines.append("rematerialised: the compiled step recomputing cheap forward values in the backward "
                     "(remat_policy='mincut') instead of keeping them")
        lines.append(SPREAD_RULE)
        warning, note = self.busy_warning(), self.spread_note()
        if warning:
            lines.append("WARNING: " + warning)
        if note:
            lines.append("Note: " + note)
        lines.append("tape ops the compiled forward merged or removed: " + (", ".join(
            f"{op} {count}->{b.graph_forward_ops.get(op, 0)}" for op, count in sorted(b.tape_ops.items())
            if b.graph_forward_ops.get(op, 0) < count) or "none"))
        for label, series in (("layers", self.by_layers), ("seq_len", self.by_length)):
            lines.append(f"growth with {label}: " + "; ".join(
                f"{m.config[label]}: {m.times[EAGER]} vs {m.times[COMPILED]}, footprint "
                f"{mib(m.footprint(EAGER))} vs {mib(m.footprint(COMPILED))}" for m in series))
        for section, paragraph in self.answers():
            lines += ["", section, *textwrap.wrap(paragraph, 116, initial_indent="  ", subsequent_indent="  ")]
        lines += ["", f"run: {self.run.describe()}"]
        return "\n".join(lines)

    def answers(self) -> list[tuple[str, str]]:
        """(heading, paragraph) for each question, in order; the static graph's answer is one per thing."""
        answers = [(QUESTIONS["where-time-goes"], self.time_per_op.paragraph()),
                   (QUESTIONS["payoff"], self.payoff.paragraph())]
        answers += [(f"{QUESTIONS['static-only']} {STATIC_ONLY[key].capitalize()}", text)
                    for key, text in self.static_only.paragraphs().items()]
        answers += [(QUESTIONS["dynamic-only"], self.dynamic_only.paragraph()),
                    (QUESTIONS["agreement"], self.agreement.paragraph())]
        return answers

    def write_html(self, path: str, lesson: bool = False) -> str:
        """The report as an HTML page at `path`, with its graphs drawn into a folder beside it and linked;
        `lesson` adds short explanations between the figures, for a class."""
        from .page import write_page

        return write_page(self, path, lesson)
