"""Honest probabilities: temperature scaling, calibration error, and "unknown" rejection.

* :func:`fit_temperature` finds the T that minimises the negative log-likelihood of
  ``softmax(logits / T)`` on held-out predictions (validation images, or cross-validated
  predictions when there are none), shrunk toward T = 1 by a prior on log T so that a
  handful of images cannot overfit it; with fewer than ``MIN_CALIBRATION_IMAGES`` held-out
  images T stays 1. It changes confidence, never the predicted class.
* :func:`expected_calibration_error` and :func:`reliability` measure how far confidence
  is from accuracy (15 equal-width confidence bins).
* :class:`OutOfDistribution` scores how unlike the training images an image is: one minus
  the mean cosine similarity of its features to their ``k`` nearest training features.
  The threshold is meant to keep 95% of in-distribution images: the 95th percentile of a
  normal distribution fitted robustly (median, 1.4826 x MAD) to held-out scores (of the
  validation images, else leave-one-out scores of the training images), widened by a
  factor (1 + 1/sqrt(n)) because a quantile of few scores is itself uncertain, and never
  below the empirical 95th percentile (the scores of varied photos are right-skewed). Above
  it, the prediction is ``unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.bundle import TEMPERATURE_RANGE
from ..heads import make_head, softmax, stratified_folds
from ..fit.summary import Calibration

__all__ = ["Honesty", "OutOfDistribution", "calibration_change", "expected_calibration_error",
           "fit_honesty",
           "fit_temperature", "leave_one_out_scores", "reliability", "robust_quantile",
           "softmax"]

MAX_REFERENCE = 2000
PRIOR_SD = 0.5  # of log T: T within 0.37-2.7 a priori (one sd)
MIN_CALIBRATION_IMAGES = 10  # fewer held-out images: T = 1, and the record says so


def fit_temperature(logits: np.ndarray, y: np.ndarray, prior_sd: float | None = PRIOR_SD
                    ) -> float:
    """The temperature in [0.05, 20] for the logits ``(N, K)`` of ``y`` ``(N,)``: the
    maximum a posteriori T under a normal prior on log T (mean 0, ``prior_sd``; None: plain
    maximum likelihood). The prior weighs like one image against the whole NLL sum, so a
    handful of held-out images cannot pull T far from 1, while hundreds can (golden-section
    search on log T: the objective is smooth and unimodal there)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(y) < 2:
        return 1.0
    penalty = 0.0 if prior_sd is None else 1.0 / (2 * prior_sd ** 2 * len(y))

    def objective(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))
        return nll + penalty * log_t ** 2
    return float(np.exp(_golden_min(objective, np.log(0.05), np.log(20.0))))


def _golden_min(f: Any, lo: float, hi: float, tol: float = 1e-5) -> float:
    """Minimiser of a unimodal ``f`` on ``[lo, hi]`` (golden-section search)."""
    r = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    best = min((fc, c), (fd, d), (f(lo), lo), (f(hi), hi))
    return float(best[1])


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and count (empty bins left out)."""
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(y)).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [],
                                   "lower": [], "upper": []}
    for b in range(bins):
        m = which == b
        if m.any():
            out["confidence"].append(float(conf[m].mean()))
            out["accuracy"].append(float(correct[m].mean()))
            out["count"].append(int(m.sum()))
            out["lower"].append(float(edges[b]))
            out["upper"].append(float(edges[b + 1]))
    return out


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Sum over confidence bins of |accuracy - confidence| weighted by the bin's share."""
    r = reliability(proba, y, bins)
    n = max(sum(r["count"]), 1)
    return float(sum(c / n * abs(a - p) for a, p, c in
                     zip(r["accuracy"], r["confidence"], r["count"])))


def robust_quantile(scores: np.ndarray, q: float = 0.95) -> float:
    """Quantile ``q`` of a normal fitted by median and MAD, widened for small samples."""
    from statistics import NormalDist

    s = np.asarray(scores, dtype=np.float64)
    med = float(np.median(s))
    spread = 1.4826 * float(np.median(np.abs(s - med)))
    robust = med + NormalDist().inv_cdf(q) * spread * (1.0 + 1.0 / np.sqrt(max(len(s), 1)))
    # a right-skewed distribution (varied photos) has more than 5% beyond the normal's
    # quantile: never go below the empirical quantile
    return max(robust, float(np.quantile(s, q))) if len(s) else robust


def calibration_change(ece_before: float, ece_after: float) -> str:
    """What temperature scaling did to the expected calibration error: ``better``, ``same``
    (within 0.01, noise on the few images it is measured on) or ``worse``."""
    if ece_after < ece_before - 1e-4:
        return "better"
    return "same" if ece_after <= ece_before + 0.01 else "worse"


def leave_one_out_scores(unit: np.ndarray, k: int) -> np.ndarray:
    """``(N,)`` one minus the mean cosine similarity of each of the ``unit`` rows ``(N, D)``
    (unit length) to its ``k`` nearest other rows: how unlike the others each one is."""
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return 1.0 - (-np.sort(-sims, axis=1)[:, :k]).mean(axis=1)


class OutOfDistribution:
    """k-NN cosine distance to the training features; see the module docstring.

    Fitted attributes: ``reference_`` ``(M, D)`` unit-norm training features (at most
    ``MAX_REFERENCE``, a seeded sample), ``threshold_``, ``k_``.
    """

    def __init__(self, k: int = 5, keep: float = 0.95, seed: int = 0) -> None:
        self.k = k
        self.keep = keep
        self.seed = seed

    @staticmethod
    def _unit(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)

    def fit(self, X_train: np.ndarray, X_val: np.ndarray | None = None
            ) -> "OutOfDistribution":
        ref = self._unit(X_train)
        if len(ref) > MAX_REFERENCE:
            pick = np.random.default_rng(self.seed).choice(len(ref), MAX_REFERENCE,
                                                           replace=False)
            ref = ref[np.sort(pick)]
        self.reference_ = ref
        self.k_ = max(1, min(self.k, len(ref) - 1))
        if X_val is not None and len(X_val):
            scores = self.score(X_val)
        else:  # leave one out: each training image against the others
            scores = leave_one_out_scores(ref, self.k_)
        self.threshold_ = robust_quantile(scores, self.keep)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` scores, higher = less like the training images."""
        if len(X) == 0:
            return np.zeros(0, np.float32)
        sims = self._unit(X) @ self.reference_.T
        k = min(self.k_, sims.shape[1])
        top = -np.sort(-sims, axis=1)[:, :k]
        return (1.0 - top.mean(axis=1)).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"reference": self.reference_}

    def config(self) -> dict[str, Any]:
        return {"k": self.k_, "threshold": self.threshold_, "keep": self.keep}

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, np.ndarray],
                   n_features: int) -> "OutOfDistribution":
        """Rebuild from :meth:`config` and :meth:`state`, checked against ``n_features``.

        Raises:
            ModelError: arrays of another shape, or ``k`` above the reference count.
        """
        from ..io.bundle import expect_shapes
        from ..errors import ModelError

        expect_shapes("ood.safetensors", state, {"reference": (-1, n_features)})
        if int(config["k"]) > len(state["reference"]):
            raise ModelError(f"headstart.json: ood.k ({config['k']}) exceeds the "
                             f"{len(state['reference'])} reference features")
        ood = cls(k=int(config["k"]), keep=float(config.get("keep", 0.95)))
        ood.reference_, ood.k_ = state["reference"], int(config["k"])
        ood.threshold_ = float(config["threshold"])
        return ood


def _cross_val_logits(kind: str, X: np.ndarray, y: np.ndarray, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold logits of a new ``kind`` head on ``X`` (empty when a class is too
    small)."""
    folds = stratified_folds(y, 5, seed)
    if folds is None:
        return np.zeros((0, len(np.unique(y)))), np.zeros(0, int)
    logits = np.zeros((len(y), len(np.unique(y))), np.float32)
    for tr, te in folds:
        logits[te] = make_head(kind, seed).fit(X[tr], y[tr]).decision_function(X[te])
    return logits, y


@dataclass
class Honesty:
    """What :func:`fit_honesty` fitted: the ``temperature`` and the unknown detector
    (``ood``), the :class:`~headstart.fit.summary.Calibration` record, and the held-out
    predictions it was fitted on (``rows`` of ``X``, their ``(n, K)`` ``logits``), for an
    honest report."""

    temperature: float
    ood: OutOfDistribution
    calibration: Calibration
    rows: np.ndarray
    logits: np.ndarray


def fit_honesty(head: Any, X: np.ndarray, y: np.ndarray, train_rows: np.ndarray,
                val_rows: np.ndarray, seed: int = 0) -> Honesty:
    """Temperature and unknown-detector for a fitted ``head`` over features ``X`` ``(N, D)``.

    With validation rows, both are fitted on them (the head never saw them); without,
    the temperature comes from the head's own out-of-fold logits on the training rows
    (``oof_logits_``: its cross-validation, not repeated here), else from cross-validated
    logits of new heads of the same kind; the detector's threshold from leave-one-out
    scores.
    """
    # scale: the deployed head's logits over those calibrated on (fold heads are fitted on
    # fewer rows, so the deployed head is sharper; 1 for the head itself on validation)
    if len(val_rows):
        logits, yv, rows = head.decision_function(X[val_rows]), y[val_rows], val_rows
        source, scale = "validation images", 1.0
    else:
        if head.oof_logits_ is not None and len(head.oof_logits_) == len(head.oof_rows_):
            rows = train_rows[head.oof_rows_]
            logits, yv = head.oof_logits_, y[rows]
        else:
            logits, yv = _cross_val_logits(head.kind, X[train_rows], y[train_rows], seed)
            rows = train_rows if len(yv) else train_rows[:0]
        source, scale = "cross-validated predictions on the training images", head.oof_scale_
    if len(yv) >= MIN_CALIBRATION_IMAGES:
        t = float(np.clip(fit_temperature(logits, yv) * scale, *TEMPERATURE_RANGE))
    else:
        t, scale = 1.0, 1.0
        source = f"not calibrated: {len(yv)} held-out image(s), {MIN_CALIBRATION_IMAGES} needed"
    info = Calibration(temperature=t, fitted_on=source, images=int(len(yv)))
    if len(yv):
        info.ece_before = expected_calibration_error(softmax(logits), yv)
        info.ece_after = expected_calibration_error(softmax(logits, t / scale), yv)
    ood = OutOfDistribution(seed=seed).fit(X[train_rows],
                                           X[val_rows] if len(val_rows) else None)
    return Honesty(t, ood, info, rows, logits)
