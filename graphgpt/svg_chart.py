"""A small SVG line chart, enough for reports (time and memory against size, live bytes over a schedule) without
a plotting library: axes with a few ticks, one polyline per series, error bars where a series has a spread, a
legend, everything escaped.

    svg = line_chart({"eager": [(1, 12.0), (2, 25.1)], "compiled": [(1, 4.2), (2, 8.0)]},
                     title="step time", x_label="layers", y_label="ms",
                     spreads={"eager": [(1, 11.5, 12.9), (2, 24.0, 26.3)]})   # (x, low, high): a bar at each x
"""

from __future__ import annotations

import html
import math

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT, MARGIN = 560, 320, 56
MARKED_POINTS = 30  # series with at most this many points get a dot at each


def _ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """Ticks a reader can read: multiples of 1, 2 or 5 times a power of ten, about `count` of them from `low` up to
    `high`; whole numbers only when the axis counts things (layers, steps)."""
    if high <= low:
        return [low]
    raw = (high - low) / (count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(multiple * power for multiple in (1, 2, 5, 10) if multiple * power >= raw)
    if whole:
        step = max(1.0, round(step))
    first = math.ceil(low / step) * step
    return [first + step * index for index in range(int((high - first) / step + 1e-9) + 1)]


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
               marker: tuple[float, str] = None, spreads: dict[str, list[tuple[float, float, float]]] = None,
               level: tuple[float, str] = None) -> str:
    """An SVG document. `marker=(x, text)` draws a labelled vertical line (a peak, say), `level=(y, text)` a
    labelled horizontal one (a capacity); `spreads` maps a series' name to (x, low, high) error bars in its
    colour (an interquartile range, say)."""
    spreads = spreads or {}
    points = [point for values in series.values() for point in values]
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    tops = [p[1] for p in points] + [high for bars in spreads.values() for _, _, high in bars]
    y_low, y_high = 0.0, max(tops + [level[0] if level else 0.0]) * 1.05 or 1.0
    x_high = x_high if x_high > x_low else x_low + 1

    def x_of(x):
        return MARGIN + (x - x_low) / (x_high - x_low) * (WIDTH - 2 * MARGIN)

    def y_of(y):
        return HEIGHT - MARGIN - (y - y_low) / (y_high - y_low) * (HEIGHT - 2 * MARGIN)

    # The legend sits right of the plot: room for its longest name (~7 px a character at font-size 11).
    width = WIDTH - MARGIN + max(MARGIN, 8 + 7 * max(len(name) for name in series))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
             f'viewBox="0 0 {width} {HEIGHT}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="#333"/>',
             f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="#333"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 16}" text-anchor="middle">{html.escape(x_label)}</text>',
             f'<text x="14" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 14 {HEIGHT / 2})">'
             f'{html.escape(y_label)}</text>']
    whole = all(float(x).is_integer() for x, _ in points)
    for tick in _ticks(x_low, x_high, whole=whole):
        parts.append(f'<text x="{x_of(tick):.1f}" y="{HEIGHT - MARGIN + 14}" text-anchor="middle">{tick:g}</text>')
    for tick in _ticks(y_low, y_high):
        parts.append(f'<text x="{MARGIN - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end">{tick:.3g}</text>')
    if marker is not None:
        x = x_of(marker[0])
        parts.append(f'<line x1="{x:.1f}" y1="{MARGIN}" x2="{x:.1f}" y2="{HEIGHT - MARGIN}" stroke="#999" '
                     f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{MARGIN + 10}">{html.escape(marker[1])}</text>')
    if level is not None:
        y = y_of(level[0])
        parts.append(f'<line class="level" x1="{MARGIN}" y1="{y:.1f}" x2="{WIDTH - MARGIN}" y2="{y:.1f}" '
                     f'stroke="#999" stroke-dasharray="4 3"/><text x="{WIDTH - MARGIN - 4}" y="{y - 4:.1f}" '
                     f'text-anchor="end">{html.escape(level[1])}</text>')
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        for x, low, high in spreads.get(name, ()):  # drawn first, under the line and its points
            cx, top, bottom = x_of(x), y_of(high), y_of(low)
            parts.append(f'<path class="spread" data-name="{html.escape(name)}" stroke="{color}" fill="none" '
                         f'd="M{cx - 4:.1f},{top:.1f}h8M{cx:.1f},{top:.1f}V{bottom:.1f}M{cx - 4:.1f},{bottom:.1f}h8"/>')
        coordinates = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in sorted(values))
        parts.append(f'<polyline class="series" data-name="{html.escape(name)}" fill="none" stroke="{color}" '
                     f'stroke-width="2" points="{coordinates}"/>')
        if len(values) <= MARKED_POINTS:  # a sparse series (a few evaluations, one) shows its points
            parts += [f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="3" fill="{color}"/>' for x, y in values]
        parts.append(f'<text x="{WIDTH - MARGIN + 4}" y="{MARGIN + 14 * index}" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
