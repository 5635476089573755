"""Static graph vs dynamic tape on the same GPT and batch: node counts, step time, peak memory, agreement of the
loss and every gradient, merged operations, and growth with model size and sequence length.

    python examples/compare_static_dynamic.py      # prints a table, writes out/compare.html
"""

import os

from graphgpt.compare import compare

report = compare(embed=32, layers=2, heads=4, seq_len=16, batch=4, repeats=3, layer_counts=(1, 2, 3),
                 lengths=(8, 16, 32))
print(report.table())
os.makedirs("out", exist_ok=True)
print("report:", report.write_html("out/compare.html"))
