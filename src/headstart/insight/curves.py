"""Learning curves: measured accuracies at a few training-set sizes, extrapolated (used by
:mod:`headstart.insight.advise`).

Model: the error rate falls as a power of the number of training images,
``err(n) = a * n ** -b`` with ``0 <= b <= 1`` (``b = 0``: more images do not help), fitted by
least squares on ``log err`` against ``log n``. An accuracy interval widens with the
distance extrapolated: half the predicted change is added on each side of the binomial
95% interval of the measured point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Curve", "binomial_halfwidth", "fit_curve"]

FLOOR = 1e-3  # no curve predicts an error rate below 0.1%


@dataclass
class Curve:
    """A fitted learning curve: ``points`` ``[(images, accuracy)]`` as measured, the
    exponent ``b`` and the scale ``a`` of ``err(n) = a * n ** -b``."""

    points: list[tuple[int, float]] = field(default_factory=list)
    a: float = 0.0
    b: float = 0.0

    def at(self, n: float) -> float:
        """Predicted accuracy with ``n`` training images."""
        if not self.points:
            return float("nan")
        return float(1.0 - max(FLOOR, min(1.0, self.a * n ** -self.b)))

    def rising(self, factor: float = 2.0) -> float:
        """Predicted accuracy gain from the largest measured size to ``factor`` times it."""
        n = self.points[-1][0]
        return self.at(factor * n) - self.at(n)


def fit_curve(points: Sequence[tuple[int, float]]) -> Curve:
    """Fit ``err(n) = a * n ** -b`` to ``[(images, accuracy)]`` (at least one point; with
    one, ``b = 0``). The curve passes through the largest measured point."""
    pts = sorted((int(n), float(acc)) for n, acc in points if n > 0)
    if not pts:
        return Curve()
    n_last, acc_last = pts[-1]
    err_last = max(FLOOR, 1.0 - acc_last)
    b = 0.0
    if len(pts) >= 2:
        x = np.log([n for n, _ in pts])
        e = np.log([max(FLOOR, 1.0 - acc) for _, acc in pts])
        slope = float(np.polyfit(x, e, 1)[0]) if np.ptp(x) > 0 else 0.0
        b = float(min(1.0, max(0.0, -slope)))
    return Curve(pts, a=err_last * n_last ** b, b=b)


def binomial_halfwidth(accuracy: float, n: int) -> float:
    """Half-width of the 95% Wilson interval of an accuracy measured on ``n`` images
    (the larger side)."""
    if n <= 0 or math.isnan(accuracy):
        return 1.0
    z = 1.96
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre + half - accuracy, accuracy - (centre - half)))
