"""Static graph vs dynamic tape on the same GPT and batch, as a page a teacher can hand out: every time the median
of interleaved runs with its quartiles, and the questions a class asks (where the time goes, when compiling pays
off, what only the static graph can do, what only the dynamic tape can do, do they agree), each answered with a
measurement of this run, with short explanations between the figures.

    python examples/compare_static_dynamic.py   # prints a table, writes out/compare.html and out/compare_graphs/

The same as `graphgpt compare --lesson --out out/compare.html`, at a smaller size (about 20 s).
"""

import os

from graphgpt.compare import compare

report = compare(embed=32, layers=2, heads=4, seq_len=16, batch=4, repeats=5, layer_counts=(1, 2, 3),
                 lengths=(8, 16, 32))
print(report.table())
os.makedirs("out", exist_ok=True)
print("report:", report.write_html("out/compare.html", lesson=True))
