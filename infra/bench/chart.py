"""Pictures of benchmark runs: a sparkline for the terminal, a line chart as SVG.

Plain SVG written by hand: a chart of a few series over time needs no plotting library,
and the file opens in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

BLOCKS = " ▁▂▃▄▅▆▇█"
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def sparkline(values: Sequence[float], top: float | None = None) -> str:
    """One character per value, scaled to ``top`` (default: the largest value)."""
    peak = top if top is not None else max(values, default=0.0)
    if peak <= 0:
        return BLOCKS[0] * len(values)
    steps = len(BLOCKS) - 1
    return "".join(BLOCKS[min(steps, max(0, round(v / peak * steps)))] for v in values)


@dataclass(frozen=True)
class Panel:
    """One chart: series of y values, one per x step (seconds, say)."""

    title: str
    y_label: str
    series: Mapping[str, Sequence[float]]
    x_label: str = "seconds"


def svg(panels: Sequence[Panel], width: int = 880, panel_height: int = 300) -> str:
    """Panels stacked vertically in one SVG document."""
    body = [
        _panel(panel, width, panel_height, top=index * panel_height)
        for index, panel in enumerate(panels)
    ]
    height = panel_height * len(panels)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
        f'<rect width="{width}" height="{height}" fill="white"/>\n' + "".join(body) + "</svg>\n"
    )


def _panel(panel: Panel, width: int, height: int, top: int) -> str:
    left, right, head, foot = 70, 170, 36, 44
    plot_w, plot_h = width - left - right, height - head - foot
    longest = max((len(values) for values in panel.series.values()), default=0)
    peak = max((max(values, default=0.0) for values in panel.series.values()), default=0.0)
    y_top = _nice_ceiling(peak)
    x_top = max(longest - 1, 1)

    def x(i: float) -> float:
        return left + plot_w * i / x_top

    def y(v: float) -> float:
        return top + head + plot_h * (1 - v / y_top)

    parts = [
        f'<text x="{left}" y="{top + 22}" font-size="15" font-weight="bold">'
        f"{escape(panel.title)}</text>\n"
    ]
    for k in range(5):  # horizontal grid lines with their values
        value = y_top * k / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#e5e7eb"/><text x="{left - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end" fill="#374151">{_short(value)}</text>\n'
        )
    for k in range(6):  # x ticks
        i = x_top * k / 5
        parts.append(
            f'<text x="{x(i):.1f}" y="{top + head + plot_h + 16}" text-anchor="middle" '
            f'fill="#374151">{i:.0f}</text>\n'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{top + height - 8}" text-anchor="middle" '
        f'fill="#374151">{escape(panel.x_label)}</text>\n'
        f'<text x="16" y="{top + head + plot_h / 2}" text-anchor="middle" fill="#374151" '
        f'transform="rotate(-90 16 {top + head + plot_h / 2})">{escape(panel.y_label)}</text>\n'
    )
    for n, (name, values) in enumerate(panel.series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        if points:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>\n'
            )
        legend_y = top + head + 14 + 20 * n
        parts.append(
            f'<line x1="{left + plot_w + 14}" x2="{left + plot_w + 34}" y1="{legend_y - 4}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="3"/>'
            f'<text x="{left + plot_w + 40}" y="{legend_y}">{escape(name)}</text>\n'
        )
    return "".join(parts)


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"
