"""Is transfer learning the right tool for this data? Measure it, then say so.

:func:`advise` reports, with numbers: the data size and balance; the domain gap between the
images and the backbone's pretraining photos (:func:`headstart.fit.domain.domain_gap`); a
learning curve of the frozen-feature head; a from-scratch baseline and a short fine-tune
trained within a time budget (``budget`` seconds of training for the two together).
Every accuracy is measured on the same validation images (the
dataset's validation split, else the same stratified held-out fold ``train`` uses). Then
one recommendation, by these rules, in order (margin: 1 point of accuracy):

1. ``train from scratch`` if the from-scratch accuracy beats the best transfer-learning
   accuracy (head only, fine-tuned) by the margin (1 point, and at least 2 validation
   images);
2. ``head + fine-tune`` if fine-tuning beats the head alone by the margin;
3. ``collect more data`` if the best accuracy is under 95% and the learning curve still
   rises (from half to all the training images, >= 2 points);
4. ``head only`` otherwise.

``predicted_accuracy`` is the measured accuracy of the recommended option (for "collect
more data", of the best option so far).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from .. import defaults
from ..backbone.build import DEFAULT_BACKBONE
from ..io.dataset import Dataset, load_dataset, split_rows, stratified_split
from ..fit.domain import domain_gap, explain
from ..errors import HeadstartError
from ..backbone.features import FeatureCache, extract_features
from ..fit.finetune import FinetuneConfig
from ..heads.linear import LinearHead
from ..fit.classifier import Classifier
from ..fit.callbacks import Callbacks
from ..fit.stages import holdout_accuracy
from ..fit.summary import DomainGap

__all__ = ["DEFAULT_BUDGET", "MARGIN", "advise", "recommend"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = defaults.BUDGET_SECONDS
MARGIN = 0.01
CURVE_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def recommend(head_only: float, finetuned: float | None, scratch: float | None,
              curve_gain: float | None, n_val: int = 1000) -> tuple[str, float, list[str]]:
    """Apply the rules of the module docstring: ``(recommendation, predicted, reasons)``.

    With ``n_val`` validation images, a difference counts only if it is at least
    ``MARGIN`` and at least two images (``2 / n_val``): with 4 validation images, one image
    is 25 points of noise.
    """
    margin = max(MARGIN, 2.0 / max(n_val, 1))
    transfer = max(head_only, finetuned if finetuned is not None else -1.0)
    best = max(transfer, scratch if scratch is not None else -1.0)
    if scratch is not None and scratch >= transfer + margin:
        return "train from scratch", scratch, [
            f"a network trained from scratch reached {scratch:.1%}, above transfer learning "
            f"({transfer:.1%}) on the same validation images"]
    if finetuned is not None and finetuned >= head_only + margin:
        return "head + fine-tune", finetuned, [
            f"fine-tuning reached {finetuned:.1%}, above the head alone ({head_only:.1%})"]
    if best < 0.95 and curve_gain is not None and curve_gain >= 0.02:
        return "collect more data", best, [
            f"accuracy is {best:.1%} and still rising with more images "
            f"(+{curve_gain:.1%} from half to all of them)"]
    return "head only", head_only, [
        f"the head on frozen features reached {head_only:.1%}; fine-tuning or training from "
        f"scratch did not beat it by {margin:.1%} (1 point, and 2 validation images)"]


def _learning_curve(X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray,
                    seed: int) -> list[dict[str, float]]:
    rows = []
    for frac in CURVE_FRACTIONS:
        if frac < 1.0:
            keep, _ = stratified_split(y[tr], 1.0 - frac, seed)  # keep ~frac of each class
            sub = tr[keep]
        else:
            sub = tr
        if len(np.unique(y[sub])) < len(np.unique(y)):
            continue
        head = LinearHead(cv=3, random_state=seed).fit(X[sub], y[sub])
        rows.append({"fraction": frac, "images": int(len(sub)),
                     "accuracy": float(np.mean(head.predict(X[va]) == y[va]))})
    return rows


def advise(data: str | os.PathLike, budget: float = DEFAULT_BUDGET,
           backbone: str = DEFAULT_BACKBONE, seed: int = 0, val_fraction: float = 0.2,
           cache_dir: str | os.PathLike | None = None,
           callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Measure whether transfer learning suits ``data`` and recommend what to do.

    Args:
        budget: seconds of training for the from-scratch baseline and the short fine-tune
            together (half each; fine-tuning also gets what the first run left unused).
            The frozen-feature measurements come on top (seconds once features are cached).

    Returns:
        a JSON-serialisable dict (keys documented in the README).

    Raises:
        HeadstartError: ``budget`` is not a positive number of seconds.
    """
    if not isinstance(budget, (int, float)) or budget <= 0:
        raise HeadstartError(param="budget", expected="seconds > 0", got=budget)
    t0 = time.perf_counter()
    cb = callbacks or Callbacks()
    ds = load_dataset(data)
    head_only = Classifier(backbone=backbone, head="auto", seed=seed, cache_dir=cache_dir,
                           val_fraction=val_fraction).fit(data, callbacks=Callbacks(cb.progress))
    bb = head_only.backbone_  # features below come from the cache this fit filled
    items, y_all, is_train = ds.rows()
    feats = extract_features(bb, items, FeatureCache(cache_dir))
    X, y = feats.X, y_all[feats.index]
    tr, va = split_rows(y, is_train[feats.index], val_fraction, seed)
    curve = _learning_curve(X, y, tr, va, seed)
    h, _ = holdout_accuracy(head_only.head_, X, y, is_train[feats.index], seed,
                            val_fraction)  # on the rows the other runs are measured on
    gap = domain_gap(bb, X[tr])
    runs = _budget_runs(data, budget, backbone, seed, val_fraction, cache_dir,
                        gap.level == "far", Callbacks(epoch=cb.epoch))
    return {
        "data": str(data),
        "classes": list(ds.train.classes),
        "data_size": _data_size(ds, y[tr], len(va), len(feats.skipped)),
        "domain_gap": gap.to_dict(),
        **_advice(h, runs, curve, len(va), gap),
        "budget_seconds": budget,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _advice(h: float, runs: dict[str, Any], curve: list[dict[str, float]], n_val: int,
            gap: DomainGap) -> dict[str, Any]:
    """The learning curve, accuracies, runs, recommendation and reasons (result keys)."""
    s, f = runs.get("from_scratch"), runs.get("finetune")
    scratch = float(s.val_accuracy) if s else None
    finetuned = float(f.val_accuracy_finetuned) if f and f.ran else None
    gain = (curve[-1]["accuracy"] - curve[-2]["accuracy"]) if len(curve) >= 2 else None
    choice, predicted, reasons = recommend(h, finetuned, scratch, gain, n_val)
    if gap.level == "far":
        reasons.append(f"the images are far from the pretraining photos ({explain(gap)})")
    return {
        "learning_curve": curve,
        "learning_curve_still_rising": bool(gain is not None and gain >= 0.02),
        "accuracy": {"head_only": h, "finetuned": finetuned, "from_scratch": scratch},
        "runs": {k: v.to_dict() for k, v in runs.items()},
        "recommendation": choice,
        "predicted_accuracy": predicted,
        "reasons": reasons,
    }


def _budget_runs(data: str | os.PathLike, budget: float, backbone: str, seed: int,
                 val_fraction: float, cache_dir: str | os.PathLike | None, far: bool,
                 epochs: Callbacks) -> dict[str, Any]:
    """Summaries of the from-scratch run and the short fine-tune that fit in ``budget``."""
    t_runs = time.perf_counter()
    runs: dict[str, Any] = {}
    share = budget / 2
    if share >= 10:
        cfg = FinetuneConfig(max_minutes=share / 60, augment="none", lr=3e-3, patience=3)
        clf = Classifier(from_scratch=True, seed=seed, cache_dir=cache_dir,
                         val_fraction=val_fraction, finetune_config=cfg).fit(
            data, callbacks=epochs)
        runs["from_scratch"] = clf.summary_.from_scratch
    left = budget - (time.perf_counter() - t_runs)
    if left >= 10:
        mode = "all" if far else "last-3"
        cfg = FinetuneConfig(max_minutes=left / 60, augment="none", patience=3,
                             backbone_lr_factor=0.5 if mode == "all" else 0.1)
        clf = Classifier(backbone=backbone, head="linear", finetune=mode, seed=seed,
                         cache_dir=cache_dir, val_fraction=val_fraction,
                         finetune_config=cfg).fit(data, callbacks=epochs)
        runs["finetune"] = clf.summary_.finetune
    return runs


def _data_size(ds: Dataset, y_train: np.ndarray, n_val: int, unreadable: int
               ) -> dict[str, Any]:
    """Training images per class, train and validation sizes, imbalance, skipped files."""
    counts = np.bincount(y_train, minlength=len(ds.train.classes))
    return {"train_counts": {c: int(n) for c, n in zip(ds.train.classes, counts)},
            "train_images": int(len(y_train)), "val_images": int(n_val),
            "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
            "skipped": len(ds.skipped) + unreadable}
