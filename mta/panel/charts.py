"""Line charts drawn on the server as SVG geometry: numbers and short labels for a template to
place (no charting library, nothing fetched; colours are SVG presentation attributes, which the
panel's CSP allows where it forbids inline styles)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 44, 12, 28  # the margins around the plot
X_LABELS = 8  # at most this many time labels under the plot
Y_TICKS = 4


@dataclass(frozen=True)
class Line:
    """One series: its polyline's points ("x,y x,y …"), its colour, its total and its peak."""

    name: str
    color: str
    points: str
    total: int
    peak: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    right: int  # x of the plot's right edge
    bottom: int  # y of the plot's bottom edge (the zero line)
    lines: list[Line]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]  # (x, label)


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k (times Y_TICKS steps) at or above `value`, so the axis
    ticks are round numbers."""
    if value <= Y_TICKS:
        return Y_TICKS
    step = value / Y_TICKS
    power = 10 ** math.floor(math.log10(step))
    for factor in (1, 2, 5, 10):
        if factor * power >= step:
            return int(factor * power * Y_TICKS)
    raise AssertionError("unreachable")


def _time_label(bucket: int, resolution: str) -> str:
    shape = {"hour": "%m-%d %H:00", "day": "%m-%d", "month": "%Y-%m"}[resolution]
    return time.strftime(shape, time.gmtime(bucket))


def line_chart(
    buckets: Sequence[int], series: Sequence[tuple[str, str, Sequence[int]]], resolution: str
) -> Chart:
    """A chart of `series` ((name, colour, one value per bucket)) over `buckets` (their start
    times, oldest first) at `resolution`."""
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    plot_w, plot_h = right - LEFT, bottom - TOP
    top_value = _nice_ceiling(max((max(v, default=0) for _, _, v in series), default=0))
    count = len(buckets)

    def x(n: int) -> float:
        return LEFT + (plot_w / 2 if count == 1 else plot_w * n / (count - 1))

    def y(value: int) -> float:
        return bottom - plot_h * value / top_value

    lines = [
        Line(
            name, color,
            " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in enumerate(values)),
            sum(values), max(values, default=0),
        )
        for name, color, values in series
    ]
    y_ticks = [
        (y(top_value * k // Y_TICKS), f"{top_value * k // Y_TICKS:,}") for k in range(Y_TICKS + 1)
    ]
    every = max(1, math.ceil(count / X_LABELS))
    x_ticks = [(x(n), _time_label(buckets[n], resolution)) for n in range(0, count, every)]
    return Chart(WIDTH, HEIGHT, LEFT, TOP, right, bottom, lines, y_ticks, x_ticks)
