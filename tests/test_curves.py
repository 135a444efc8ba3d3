from __future__ import annotations

import math

import pytest

from headstart.insight.curves import binomial_halfwidth, fit_curve


def test_power_law_is_recovered_and_extrapolated():
    # err(n) = 2 n^-0.5: 50 -> 0.283, 200 -> 0.141, 800 -> 0.0707
    pts = [(n, 1 - 2 * n ** -0.5) for n in (50, 200, 800)]
    c = fit_curve(pts)
    assert c.b == pytest.approx(0.5, abs=1e-6)
    assert c.at(3200) == pytest.approx(1 - 2 * 3200 ** -0.5, abs=1e-6)
    assert c.rising() == pytest.approx(c.at(1600) - c.at(800))


def test_flat_or_falling_curves_do_not_promise_gains():
    assert fit_curve([(10, 0.9), (20, 0.85)]).b == 0.0
    one = fit_curve([(40, 0.7)])
    assert one.b == 0.0 and one.at(4000) == pytest.approx(0.7)
    assert math.isnan(fit_curve([]).at(10))
    # a steep curve is capped at b = 1 and never predicts past 99.9%
    steep = fit_curve([(10, 0.5), (20, 0.99)])
    assert steep.b == 1.0 and steep.at(10**9) <= 0.999


def test_binomial_interval_shrinks_with_images():
    assert binomial_halfwidth(0.9, 10) > binomial_halfwidth(0.9, 100) > \
        binomial_halfwidth(0.9, 10_000)
    assert binomial_halfwidth(1.0, 9) > 0.1  # 9 of 9 right is not certainty
    assert binomial_halfwidth(0.5, 0) == 1.0
