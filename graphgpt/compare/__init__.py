"""Static vs dynamic, the study a class can be handed: the same GPT and batch through the eager tape
(define-by-run, as TinyTorch's autograd) and through compiled graphs, and the questions a class asks, each
answered with a measurement of the same run and one paragraph: where the time goes, when compiling pays off, what
only the static graph can do, what only the dynamic tape can do, and whether they agree. Every time is the median
of interleaved runs with its interquartile range, and a spread that says the machine was busy is reported.

    report = compare(embed=64, layers=2, heads=4, seq_len=32, batch=4)
    print(report.table()); report.write_html("compare.html", lesson=True)

The parts: measurement.py (one model size, both ways; memory's three named measures), time_per_op.py, payoff.py,
static_only.py, dynamic_only.py (with teaching_models.py), agreement.py, report.py (the Report and its terminal
table), page.py (the HTML page), graphs.py (the graphs it links) and lesson.py (the explanations of --lesson).
"""

from __future__ import annotations

import os
import resource
import sys
import time

from ..tape_graph import tape_graph
from ..timing import interleaved_times, spread_of
from .agreement import measure_agreement
from .dynamic_only import measure_dynamic_only
from .measurement import COMPILED, REMAT, VOCAB, Measurement, Subject, describe_config
from .payoff import PayoffRuns
from .report import Report, Run
from .static_only import StaticOnlyRuns
from .time_per_op import TimePerOp

__all__ = ["compare", "Report", "Measurement", "describe_config", "VOCAB"]


def _check_arguments(sizes: dict, series: dict) -> None:
    """Every size a whole number of at least 1, every series of sizes non-empty: refused before minutes of
    measuring, rather than failing in the middle (a median of no timings) or at the end."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for name, value in sizes.items():
        if not whole(value):
            raise ValueError(f"compare: {name} must be a whole number of at least 1, got {value!r}")
    for name, values in series.items():
        if not values or not all(whole(value) for value in values):
            raise ValueError(f"compare: {name} must be a non-empty list of whole numbers of at least 1, got "
                             f"{values!r}")
    if sizes["embed"] % sizes["heads"]:
        raise ValueError(f"compare: embed ({sizes['embed']}) must be divisible by heads ({sizes['heads']})")


def compare(embed: int = 64, layers: int = 2, heads: int = 4, seq_len: int = 32, batch: int = 4,
            repeats: int = 15, layer_counts=(1, 2, 4), lengths=(16, 32, 64)) -> Report:
    """Measure everything the report shows, in one run. All times (every size's steps, compiling, generating)
    come from one interleaved pass of `repeats` rounds, so a busy spell falls on all of them alike. 15 rounds
    (about 11 s on a quiet 2-core machine) span enough of a run's time that four runs gave overlapping quartiles
    for every step time; 7 rounds (8 s) did not: the compiled step's ranges of two runs were 4.20-4.40 and
    4.69-5.40 ms."""
    _check_arguments(dict(embed=embed, layers=layers, heads=heads, seq_len=seq_len, batch=batch, repeats=repeats),
                     dict(layer_counts=layer_counts, lengths=lengths))
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    subjects: dict[tuple, Subject] = {}  # by size: the base size is also one of the series' sizes

    def subject(layer_count: int, length: int) -> Subject:
        key = (layer_count, length)
        if key not in subjects:
            subjects[key] = Subject(embed, layer_count, heads, length, batch)
        return subjects[key]

    base = subject(layers, seq_len)
    series = {"layers": [subject(count, seq_len) for count in layer_counts],
              "seq_len": [subject(layers, length) for length in lengths]}
    payoff, static_only = PayoffRuns(base), StaticOnlyRuns(base)
    contenders = {(key, name): run for key, each in subjects.items() for name, run in each.contenders().items()}
    contenders.update({("payoff", name): run for name, run in payoff.contenders().items()})
    contenders.update({("static", name): run for name, run in static_only.contenders().items()})
    spreads = {key: spread_of(seconds) for key, seconds in interleaved_times(contenders, repeats).items()}

    def times_of(group) -> dict:
        return {name: spread for (owner, name), spread in spreads.items() if owner == group}

    for key, each in subjects.items():
        each.take_times(times_of(key))
    by_length = [each.result for each in series["seq_len"]]
    agreement, dynamic_only = measure_agreement(base), measure_dynamic_only()
    loss, tokens, targets = base.eager_loss()
    graphs = {"tape": tape_graph(loss, dict(base.model.named_parameters()), {"tokens": tokens, "targets": targets},
                                 like=base.traced),
              "traced": base.traced, COMPILED: base.step, REMAT: base.remat, "split": static_only.split,
              "numba": static_only.numba}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    run = Run(repeats, os.cpu_count() or 1, load_before, os.getloadavg()[0], time.perf_counter() - started, peak_rss)
    return Report(base.result, [each.result for each in series["layers"]], by_length, TimePerOp(by_length),
                  payoff.result(times_of("payoff"), base.result.times),
                  static_only.result(times_of("static"), base.result.times), dynamic_only, agreement, run,
                  {name: graph for name, graph in graphs.items() if graph is not None})
