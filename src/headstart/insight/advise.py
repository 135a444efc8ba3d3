"""Is transfer learning the right tool for this data? Measure it, then say so.

:func:`advise` measures three options on a fixed amount of work (images and epochs, never
seconds, so that a busy machine gives the same advice as a quiet one):

* ``head only``: the frozen-feature head (the kind ``train`` chooses) at 10/25/50/100% of
  the training images;
* ``head + fine-tune``: ``last-3`` (``all`` where the images are far from ImageNet),
  :data:`FT_EPOCHS` epochs, on the training images and on half of them;
* ``train from scratch``: ``resnet10t``, :data:`SCRATCH_EPOCHS` epochs, likewise.

Both are measured at their last epoch (the only one validated): the best epoch, chosen
on the validation images, would be measured on the images that chose it (on 24 images,
the best of 8 epochs reads high by luck).

The expensive runs use at most :data:`MAX_IMAGES` training and :data:`MAX_VAL` validation
images (stratified samples); with fewer than :data:`FEW_VAL` validation images every
option is measured on :data:`REPEATS` stratified splits of all the labelled images and
averaged. Every option is measured on the same validation images (the dataset's
validation split, else the held-out fold ``train`` uses), then each option's learning
curve (:mod:`headstart.insight.curves`) gives what it would reach with all the training
images, and with 2x and 10x as many, with a 95% interval.

The recommendation: the option with the highest predicted accuracy, except that options
the validation images cannot tell apart (a difference under one standard error of the
difference, 1 point or 2 validation images) are "too close to call", and of those the
simplest is recommended (head only, then fine-tune, then from scratch). Where the best
prediction is under 95% and 2x the images would add 2 points or more, the advice says
how much collecting them would likely bring.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import defaults
from ..backbone.build import DEFAULT_BACKBONE, Backbone
from ..io.dataset import Dataset, load_dataset, split_rows, stratified_split
from ..io.files import resolve_cache_dir
from ..fit.domain import domain_gap, explain
from ..errors import HeadstartError
from ..backbone.features import FeatureCache, extract_features
from ..fit.finetune import FinetuneConfig, finetune_stage
from ..fit.scratch import scratch_stage
from ..fit.classifier import Classifier
from ..fit.callbacks import Callbacks
from .curves import Curve, binomial_halfwidth, fit_curve

__all__ = ["FEW_VAL", "FT_EPOCHS", "MARGIN", "MAX_IMAGES", "MAX_VAL", "OPTIONS", "Option",
           "REPEATS", "SCRATCH_EPOCHS", "advise", "recommend"]

logger = logging.getLogger(__name__)

MARGIN = 0.01
FT_EPOCHS = 8
SCRATCH_EPOCHS = 10
MAX_IMAGES = defaults.ADVISE_MAX_IMAGES
MAX_VAL = 1000
FEW_VAL = 100
REPEATS = 3
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
OPTIONS = ("head only", "head + fine-tune", "train from scratch")  # simplest first
CAVEAT = ("every accuracy here is measured on held-out images from the same folders as the "
          "training images; photos from another camera, place or time can score lower")


@dataclass
class Option:
    """One option as measured and extrapolated.

    ``measured``: mean validation accuracy with ``images`` training images (``val_images``
    validation images over all repeats); ``curve``: its learning curve; ``predicted``:
    with the user's ``target`` training images; ``interval``: 95% of ``predicted``;
    ``more``: predicted with 2x and 10x the images."""

    name: str
    measured: float
    images: int
    val_images: int
    curve: Curve
    target: int
    predicted: float = float("nan")
    interval: tuple[float, float] = (0.0, 1.0)
    more: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.predicted = self.curve.at(self.target)
        half = binomial_halfwidth(self.measured, self.val_images) \
            + 0.5 * abs(self.predicted - self.measured)
        self.interval = (max(0.0, self.predicted - half), min(1.0, self.predicted + half))
        self.more = {"2x": self.curve.at(2 * self.target), "10x": self.curve.at(10 * self.target)}

    @property
    def se(self) -> float:
        """Standard error of ``predicted`` (from its interval)."""
        return (self.interval[1] - self.interval[0]) / (2 * 1.96)

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "images": self.images,
                "val_images": self.val_images, "predicted": self.predicted,
                "interval": list(self.interval), "with_more_images": self.more,
                "training_images": self.target,
                "curve": [{"images": n, "accuracy": a} for n, a in self.curve.points]}


def recommend(options: dict[str, Option]) -> tuple[str, float, list[str], list[str]]:
    """The rules of the module docstring: ``(recommendation, predicted accuracy, reasons,
    options too close to call with it)``."""
    ranked = sorted(options.values(), key=lambda o: -o.predicted)
    best = ranked[0]

    def close(o: Option) -> bool:
        n = min(best.val_images, o.val_images)
        gap = max(MARGIN, 2.0 / max(n, 1), math.hypot(best.se, o.se))
        return best.predicted - o.predicted < gap
    tied = [o for o in ranked if close(o)]
    chosen = min(tied, key=lambda o: OPTIONS.index(o.name))
    reasons = [f"{o.name}: {_says(o)}" for o in ranked]
    others = [o.name for o in tied if o is not chosen]
    if others:
        reasons.append(f"too close to call: {chosen.name} and {', '.join(others)} differ by "
                       "less than these validation images can tell apart; the simpler one "
                       "is recommended")
    elif len(ranked) > 1:
        runner = ranked[1] if ranked[0] is chosen else ranked[0]
        reasons.append(f"{chosen.name} is ahead of {runner.name} by "
                       f"{chosen.predicted - runner.predicted:.1%}, more than the "
                       "measurement's noise")
    more = _more_data(chosen)
    if more:
        reasons.append(more)
    return chosen.name, chosen.predicted, reasons, others


def _says(o: Option) -> str:
    """One option's figures in words."""
    lo, hi = o.interval
    text = (f"{o.measured:.1%} on {o.val_images} validation images with {o.images} training "
            f"images; expected {o.predicted:.1%} with all {o.target} (95% interval "
            f"{lo:.0%}-{hi:.0%})")
    return text


def _more_data(o: Option) -> str | None:
    """What collecting more images would likely bring ``o``, when it is worth saying."""
    if o.predicted >= 0.95 or o.more["2x"] - o.predicted < 0.02:
        return None
    return (f"collecting {o.target} more images (2x) would likely bring {o.name} to "
            f"~{o.more['2x']:.0%} ({o.more['10x']:.0%} with 10x)")


def advise(data: str | os.PathLike, backbone: str = DEFAULT_BACKBONE, seed: int = 0,
           val_fraction: float = 0.2, cache_dir: str | os.PathLike | None = None,
           callbacks: Callbacks | None = None, max_images: int = MAX_IMAGES,
           ft_epochs: int = FT_EPOCHS, scratch_epochs: int = SCRATCH_EPOCHS
           ) -> dict[str, Any]:
    """Measure whether transfer learning suits ``data`` and recommend what to do.

    Args:
        max_images: training images per fine-tuning or from-scratch run (a stratified
            sample beyond; the learning curves extrapolate to all of them).
        ft_epochs, scratch_epochs: the epochs of those runs (no early stopping: the
            last epoch is measured).

    Returns:
        a JSON-serialisable dict (keys documented in the README).

    Raises:
        HeadstartError: a setting is out of range.
    """
    for name, v, low in (("max_images", max_images, 20), ("ft_epochs", ft_epochs, 1),
                         ("scratch_epochs", scratch_epochs, 1)):
        if not isinstance(v, int) or v < low:
            raise HeadstartError(param=name, expected=f"an integer >= {low}", got=v)
    t0 = time.perf_counter()
    cb = callbacks or Callbacks()
    ds = load_dataset(data)
    fitted = Classifier(backbone=backbone, head="auto", seed=seed, cache_dir=cache_dir,
                        val_fraction=val_fraction).fit(data, callbacks=Callbacks(cb.progress))
    bb = fitted.backbone_  # features below come from the cache this fit filled
    items, y_all, is_train = ds.rows()
    cache = FeatureCache(cache_dir)
    feats = extract_features(bb, items, cache)
    rows = _Rows([items[i] for i in feats.index], y_all[feats.index],
                 is_train[feats.index], feats.X)
    gap = domain_gap(bb, rows.X[split_rows(rows.y, rows.is_train, val_fraction, seed)[0]])
    splits = _splits(rows, val_fraction, seed)
    work = _Work(bb, fitted.head_, gap.level == "far", seed, resolve_cache_dir(cache_dir),
                 _features_of(bb, cache), max_images,
                 ft_epochs, scratch_epochs)
    options, runs = _measure(rows, splits, work)
    out = _report(options, gap)
    return {
        "data": str(data), "classes": list(ds.train.classes),
        "data_size": _data_size(ds, rows.y[splits[0][0]], len(splits[0][1]),
                                len(feats.skipped)),
        "domain_gap": gap.to_dict(), **out, "runs": runs,
        "work": {"max_images": max_images, "ft_epochs": ft_epochs,
                 "scratch_epochs": scratch_epochs, "repeats": len(splits)},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _report(options: dict[str, Option], gap: Any) -> dict[str, Any]:
    """The result keys that come from the measured options: the head's learning curve,
    accuracies, options, recommendation, interval, ties and reasons."""
    choice, predicted, reasons, tied = recommend(options)
    if gap.level == "far":
        reasons.append(f"the images are far from the pretraining photos ({explain(gap)})")
    reasons.append(CAVEAT)
    head = options["head only"]
    return {
        "learning_curve": [{"images": n, "accuracy": a} for n, a in head.curve.points],
        "learning_curve_still_rising": bool(head.more["2x"] - head.predicted >= 0.02),
        "accuracy": {"head_only": head.measured,
                     "finetuned": _measured(options, "head + fine-tune"),
                     "from_scratch": _measured(options, "train from scratch")},
        "options": {k: o.to_dict() for k, o in options.items()},
        "recommendation": choice, "predicted_accuracy": predicted,
        "interval": list(options[choice].interval), "too_close_to_call": tied,
        "reasons": reasons,
    }


def _features_of(bb: Backbone, cache: FeatureCache) -> Callable[[Backbone, list[Any]],
                                                                   np.ndarray]:
    """Features ``(N, D)`` under a backbone: the frozen one's (any image size) through the
    cache and the fastest engine; a trained one's with PyTorch (no engine export for a
    network measured once)."""
    def features(b: Backbone, paths: list[Any]) -> np.ndarray:
        tuned = b.model is not None and b.model is not bb.model
        return extract_features(b, paths, cache, runtime="torch" if tuned else "auto").X
    return features


def _measured(options: dict[str, Option], name: str) -> float | None:
    return options[name].measured if name in options else None


@dataclass
class _Rows:
    """The readable labelled images: paths, labels ``(N,)``, training rows ``(N,)`` bool
    and frozen features ``(N, D)``."""

    paths: list[Any]
    y: np.ndarray
    is_train: np.ndarray
    X: np.ndarray


@dataclass
class _Work:
    """What the measurements run with (see :func:`_measure`)."""

    backbone: Backbone
    head: Any
    far: bool
    seed: int
    cache_root: Any
    features: Callable[[Any, list[Any]], np.ndarray]
    max_images: int
    ft_epochs: int
    scratch_epochs: int


def _splits(rows: _Rows, val_fraction: float, seed: int
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train rows, validation rows)]``: the split ``train`` uses (validation capped at
    :data:`MAX_VAL`, stratified), or with fewer than :data:`FEW_VAL` validation images,
    :data:`REPEATS` stratified splits of all the rows (the first one ``train``'s)."""
    tr, va = split_rows(rows.y, rows.is_train, val_fraction, seed)
    if len(va) > MAX_VAL:
        keep, _ = stratified_split(rows.y[va], 1.0 - MAX_VAL / len(va), seed)
        va = va[keep]
    out = [(tr, va)]
    if len(va) < FEW_VAL:
        everything = np.arange(len(rows.y))
        frac = max(val_fraction, len(va) / len(rows.y))
        for r in range(1, REPEATS):
            a, b = stratified_split(rows.y, frac, seed + r)
            if len(np.unique(rows.y[a])) == len(np.unique(rows.y)) and len(b):
                out.append((everything[a], everything[b]))
    return out


def _subsample(y: np.ndarray, rows: np.ndarray, n: int, seed: int) -> np.ndarray | None:
    """A stratified sample of about ``n`` of ``rows`` (all if fewer), or None when a class
    would be left without an image."""
    if n >= len(rows):
        return rows
    keep, _ = stratified_split(y[rows], 1.0 - n / len(rows), seed)
    sub = rows[keep]
    return sub if len(np.unique(y[sub])) == len(np.unique(y[rows])) else None


def _measure(rows: _Rows, splits: list[tuple[np.ndarray, np.ndarray]], work: _Work
             ) -> tuple[dict[str, Option], dict[str, Any]]:
    """Each option measured on ``splits`` and extrapolated to the user's training images;
    the summaries of the full-size fine-tuning and from-scratch runs of the first split."""
    target = len(splits[0][0])
    options = {"head only": _head_option(rows, splits, work, target)}
    runs: dict[str, Any] = {}
    for name in OPTIONS[1:]:
        points: dict[int, list[tuple[float, int]]] = {}
        for r, (tr, va) in enumerate(splits):
            full = _subsample(rows.y, tr, work.max_images, work.seed)
            half = _subsample(rows.y, full, len(full) // 2, work.seed) \
                if full is not None else None
            for sub in (half, full):
                if sub is None or len(sub) < 2 * len(np.unique(rows.y)):
                    continue
                acc, summary = _train_option(name, rows, sub, va, work)
                points.setdefault(len(sub), []).append((acc, len(va)))
                if r == 0 and sub is full:
                    runs["finetune" if name == OPTIONS[1] else "from_scratch"] = summary
        if points:
            options[name] = _option(name, points, target)
    return options, runs


def _option(name: str, points: dict[int, list[tuple[float, int]]], target: int) -> Option:
    """An :class:`Option` from ``{images: [(accuracy, validation images)]}`` (repeats
    averaged, weighted by their validation images)."""
    curve_pts = []
    for n, accs in sorted(points.items()):
        total = sum(v for _, v in accs)
        curve_pts.append((n, sum(a * v for a, v in accs) / max(total, 1)))
    n_top = max(points)
    return Option(name, curve_pts[-1][1], n_top, sum(v for _, v in points[n_top]),
                  fit_curve(curve_pts), target)


def _head_option(rows: _Rows, splits: list[tuple[np.ndarray, np.ndarray]], work: _Work,
                 target: int) -> Option:
    """The frozen-feature head (``train``'s kind and settings) at 10/25/50/100% of the
    training rows of each split."""
    points: dict[int, list[tuple[float, int]]] = {}
    params = work.head.refit_params()
    for tr, va in splits:
        for frac in CURVE_FRACTIONS:
            sub = _subsample(rows.y, tr, max(1, round(frac * len(tr))), work.seed)
            if sub is None or (frac < 1.0 and len(sub) == len(tr)):
                continue
            head = type(work.head)(**params)
            try:
                head.fit(rows.X[sub], rows.y[sub])
            except (ValueError, HeadstartError):  # too few images of a class to fit
                continue
            acc = float(np.mean(head.predict(rows.X[va]) == rows.y[va]))
            points.setdefault(len(sub), []).append((acc, len(va)))
    return _option("head only", points, target)


def _train_option(name: str, rows: _Rows, sub: np.ndarray, va: np.ndarray, work: _Work
                  ) -> tuple[float, Any]:
    """Fine-tune (or train from scratch) on rows ``sub``, validated on ``va``: ``(accuracy,
    summary)``."""
    idx = np.concatenate([sub, va])
    paths = [rows.paths[i] for i in idx]
    y = rows.y[idx]
    is_train = np.arange(len(idx)) < len(sub)
    if name == "head + fine-tune":
        mode = "all" if work.far else "last-3"
        cfg = FinetuneConfig(mode=mode, augment="none", patience=work.ft_epochs,
                             max_epochs=work.ft_epochs, restore_best=False,
                             backbone_lr_factor=0.5 if mode == "all" else 0.1,
                             keep="finetuned", validate_each_epoch=False)
        res = finetune_stage(work.backbone, paths, y, is_train, float("nan"), cfg,
                             work.cache_root, work.features, work.seed)
        return float(res.summary.val_accuracy_finetuned), res.summary.to_dict()
    cfg = FinetuneConfig(max_epochs=work.scratch_epochs, augment="none", lr=defaults.SCRATCH_LR,
                         patience=work.scratch_epochs, restore_best=False,
                         validate_each_epoch=False)
    res = scratch_stage(paths, y, is_train, int(rows.y.max()) + 1, cfg, work.cache_root,
                        work.features, work.seed)
    return float(res.val_accuracy), res.summary.to_dict()


def _data_size(ds: Dataset, y_train: np.ndarray, n_val: int, unreadable: int
               ) -> dict[str, Any]:
    """Training images per class, train and validation sizes, imbalance, skipped files."""
    counts = np.bincount(y_train, minlength=len(ds.train.classes))
    return {"train_counts": {c: int(n) for c, n in zip(ds.train.classes, counts)},
            "train_images": int(len(y_train)), "val_images": int(n_val),
            "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
            "skipped": len(ds.skipped) + unreadable}
