"""The report's charts as SVG, written directly (private): no plotting library to import,
crisp at any zoom, text that can be selected and searched. Each function returns one
``<svg>`` document as a string."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np

__all__ = ["confusion_svg", "lines_svg", "side_by_side"]

BLUE, ORANGE, GREEN, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#888"
FONT = 'font-family="sans-serif" font-size="11"'


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{html.escape(label)}">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(body)}</svg>')


def _text(x: float, y: float, s: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} {extra}>'
            f"{html.escape(s)}</text>")


def _heatmap(data: np.ndarray, classes: Sequence[str], left: float, top: float,
             cell: float, title: str, fmt: str, numbers: bool) -> list[str]:
    out = [_text(left + cell * len(classes) / 2, top - 8, title, extra='font-weight="bold"')]
    peak = float(data.max()) or 1.0
    for (i, j), v in np.ndenumerate(data):
        shade = float(v) / peak
        r, g, b = (int(247 - 239 * shade), int(251 - 203 * shade), int(255 - 148 * shade))
        x, y = left + j * cell, top + i * cell
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                   f'fill="rgb({r},{g},{b})" stroke="#ddd"><title>true {html.escape(classes[i])}'
                   f", predicted {html.escape(classes[j])}: {fmt.format(v)}</title></rect>")
        if numbers:
            colour = "white" if shade > 0.5 else "black"
            out.append(_text(x + cell / 2, y + cell / 2 + 4, fmt.format(v),
                             extra=f'fill="{colour}"'))
    for k, name in enumerate(classes):
        out.append(_text(left - 4, top + k * cell + cell / 2 + 4, name[:18], "end"))
        cx, cy = left + k * cell + cell / 2, top + cell * len(classes) + 6
        out.append(_text(cx, cy, name[:18], "end",
                         f'transform="rotate(-45 {cx:.1f} {cy:.1f})"'))
    n = len(classes)
    out.append(_text(left + cell * n / 2, top + cell * n + 110, "predicted"))
    return out


def confusion_svg(cm: np.ndarray, classes: Sequence[str]) -> str:
    """Counts and row-normalised rates, side by side (rows: true class, columns:
    predicted); numbers in the cells up to 20 classes, hover titles always."""
    k = len(classes)
    cell = max(14.0, min(44.0, 440.0 / max(k, 1)))
    left, top, side = 130.0, 30.0, cell * k
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    body = _heatmap(cm, classes, left, top, cell, "counts", "{:d}", k <= 20)
    body += _heatmap(norm, classes, 2 * left + side, top, cell, "normalised by true class",
                     "{:.2f}", k <= 20)
    body.append(_text(14, top + side / 2, "true", extra=f'transform="rotate(-90 14 '
                                                       f'{top + side / 2:.1f})"'))
    return _svg(3 * left + 2 * side, top + side + 125, body, "confusion matrix")


def lines_svg(series: Sequence[tuple[str, Sequence[float], Sequence[float], str, str]],
              xlabel: str, ylabel: str, xlim: tuple[float, float] | None = None,
              ylim: tuple[float, float] | None = None,
              diagonal: bool = False, label: str = "chart", whole_x: bool = False) -> str:
    """A line chart: each series ``(name, xs, ys, colour, dash)`` with its points marked,
    a legend, axes with ticks; ``diagonal`` draws y = x (perfect calibration);
    ``whole_x``: ticks at whole numbers (epochs)."""
    width, height, left, right, top, bottom = 460.0, 330.0, 55.0, 15.0, 15.0, 45.0
    xs_all = [x for _, xs, _, _, _ in series for x in xs] or [0.0, 1.0]
    ys_all = [y for _, _, ys, _, _ in series for y in ys if y == y] or [0.0, 1.0]
    x0, x1 = xlim or (min(xs_all), max(xs_all))
    y0, y1 = ylim or (min(ys_all), max(ys_all))
    x1 = x1 if x1 > x0 else x0 + 1
    if y1 <= y0:  # a flat series: centre it
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
    body = [f'<rect x="{left}" y="{top}" width="{width - left - right}" '
            f'height="{height - top - bottom}" fill="none" stroke="#999"/>']
    xticks = (np.arange(np.ceil(x0), np.floor(x1) + 1, max(1, round((x1 - x0) / 8)))
              if whole_x else nice_ticks(x0, x1))
    for t in xticks:
        body.append(_text(px(t), height - bottom + 15, f"{t:.3g}"))
    for t in nice_ticks(y0, y1):
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{py(t):.1f}" '
                    f'y2="{py(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 5, py(t) + 4, f"{t:.3g}", "end"))
    body.append(_text((left + width - right) / 2, height - 8, xlabel))
    body.append(_text(14, (top + height - bottom) / 2, ylabel,
                      extra=f'transform="rotate(-90 14 {(top + height - bottom) / 2:.1f})"'))
    if diagonal:
        body.append(f'<line x1="{px(x0):.1f}" y1="{py(y0):.1f}" x2="{px(x1):.1f}" '
                    f'y2="{py(y1):.1f}" stroke="{GREY}" stroke-dasharray="5,4"/>')
    for k, (name, xs, ys, colour, dash) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys) if y == y)
        body.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                    f'stroke-width="2" stroke-dasharray="{dash}"/>')
        body += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>'
                 for x, y in zip(xs, ys) if y == y]
        ly = top + 14 + 16 * k
        body.append(f'<line x1="{left + 10}" x2="{left + 30}" y1="{ly - 4}" y2="{ly - 4}" '
                    f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        body.append(_text(left + 35, ly, name, "start"))
    return _svg(width, height, body, label)


def nice_ticks(lo: float, hi: float, most: int = 6) -> np.ndarray:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside ``[lo, hi]``:
    0, 0.2, ... 1 for ``(0, 1.02)``, never 0.204, 0.408."""
    span = hi - lo
    if span <= 0:
        return np.array([lo])
    power = 10 ** np.floor(np.log10(span / max(1, most - 1)))
    step = next(m * power for m in (1, 2, 5, 10, 20) if span / (m * power) <= most)
    ticks = np.arange(np.ceil(lo / step - 1e-9) * step, hi + step * 1e-9, step)
    return np.round(ticks, 10) + 0.0


def side_by_side(*charts: str, width: float = 460.0, height: float = 330.0,
                 label: str = "charts") -> str:
    """Charts from :func:`lines_svg` next to each other, as one SVG."""
    body = [f'<svg x="{i * width:.0f}" y="0" width="{width:.0f}" height="{height:.0f}">'
            f'{c[c.index(">") + 1:c.rindex("</svg>")]}</svg>' for i, c in enumerate(charts)]
    return _svg(width * len(charts), height, body, label)
