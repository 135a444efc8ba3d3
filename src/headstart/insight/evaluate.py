"""Measuring a trained classifier on labelled images.

:func:`evaluate` returns a JSON-serialisable dict: ``accuracy``, ``n_images``, ``classes``,
``per_class`` (precision, recall, F1, support), ``macro_f1``, ``confusion_matrix`` (rows:
true class, columns: predicted class, in ``classes`` order), ``skipped`` files and
``health``: the data health of the evaluated images (:mod:`headstart.fit.health`), including
*leakage*: images whose bytes equal an image the model was trained on, or whose features
are near duplicates of one (at the training data's near-duplicate threshold).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..fit.calibration import expected_calibration_error, softmax
from ..io.dataset import load_labelled
from ..errors import DataError
from ..backbone.features import ProgressFn
from ..fit.health import TrainedOn, assess, entries_of, folder_problems
from ..fit.classifier import Classifier

__all__ = ["bootstrap_ci", "classification_metrics", "evaluate", "evaluation",
           "scored_metrics", "wilson_ci"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
CI_METHOD = ("Wilson score interval (accuracy, per-class recall); percentile bootstrap, "
             "2000 resamples (macro F1)")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
                           ) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    ``y_true`` and ``y_pred`` are ``(N,)`` class indices into ``classes``.
    """
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / (precision + recall), 0.0)
    support = cm.sum(1)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "n_images": int(cm.sum()),
        "classes": list(classes),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion_matrix": cm.tolist(),
    }


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``successes / n``: right at the edges
    (30/30 gives 0.886-1.000, 0/30 gives 0.000-0.114), where a bootstrap collapses to a
    zero-width interval. ``(nan, nan)`` for ``n = 0``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p, zz = successes / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * np.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    return float(lo), float(1.0 if successes == n else min(1.0, centre + half))


def _mean(cells: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(B,)`` mean of the values ``cells`` ``(U,)`` taken ``counts`` ``(B, U)`` times."""
    return counts @ cells / counts.sum(axis=1)


def _macro_f1(cells: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(B,)`` macro F1, over the classes present, of the (true, predicted) pairs
    ``cells`` ``(U, 2)`` taken ``counts`` ``(B, U)`` times."""
    k = int(cells.max()) + 1
    true, pred = np.eye(k)[cells[:, 0]], np.eye(k)[cells[:, 1]]
    support, predicted, tp = counts @ true, counts @ pred, counts @ (true * pred)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0,
                 statistic: Any = _mean) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of a statistic of the rows of ``values`` (discrete:
    0/1 outcomes, (true, predicted) pairs), resampled with replacement; None when every
    resample gives the same value (a zero-width interval would claim certainty the data
    cannot give). A resample is drawn as how many times each distinct row comes up
    (multinomial, the same distribution as drawing rows), so the cost does not grow with
    the number of rows; ``statistic(cells, counts)`` gets the distinct rows and the
    ``(n_boot, U)`` counts and returns ``(n_boot,)`` values (default: the mean)."""
    values = np.asarray(values)
    if len(values) == 0:
        return None
    cells, inverse = np.unique(values, axis=0, return_inverse=True)
    freq = np.bincount(inverse.ravel(), minlength=len(cells)) / len(values)
    counts = np.random.default_rng(seed).multinomial(len(values), freq, size=n_boot)
    stats = statistic(cells, counts.astype(float))
    lo, hi = float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))
    return None if hi - lo <= 0 else (lo, hi)


def scored_metrics(y_true: np.ndarray, logits: np.ndarray, temperature: float,
                   classes: list[str], rejected: np.ndarray | None = None) -> dict[str, Any]:
    """Classification metrics, 95% intervals (``accuracy_ci95``, ``recall_ci95`` per class,
    ``macro_f1_ci95`` or None, the methods in ``ci_method``), calibration (ECE raw and
    scaled; ``above_90``: how many predictions were above 90% confident, how many of those
    were wrong and how many the probabilities expected to be) and rejection figures."""
    proba = softmax(logits, temperature)
    y_pred = proba.argmax(axis=1)
    m = classification_metrics(y_true, y_pred, classes)
    m["accuracy_ci95"] = list(wilson_ci(int(np.sum(y_pred == y_true)), len(y_true)))
    for i, c in enumerate(classes):
        row = m["per_class"][c]
        hits = int(np.sum((y_true == i) & (y_pred == i)))
        row["recall_ci95"] = list(wilson_ci(hits, row["support"])) if row["support"] else None
    f1 = bootstrap_ci(np.stack([y_true, y_pred], axis=1), statistic=_macro_f1)
    m["macro_f1_ci95"] = list(f1) if f1 else None
    m["ci_method"] = CI_METHOD
    raw = softmax(logits)
    confident = proba.max(axis=1) > 0.9
    m["calibration"] = {"temperature": float(temperature),
                        "ece_before": expected_calibration_error(raw, y_true),
                        "ece_after": expected_calibration_error(proba, y_true),
                        "above_90": {"images": int(confident.sum()),
                                     "wrong": int(np.sum(confident & (y_pred != y_true))),
                                     "expected_wrong": float(np.sum(
                                         1 - proba.max(axis=1)[confident]))}}
    if rejected is not None:
        kept = ~rejected
        m["unknown"] = {"rejected": int(rejected.sum()),
                        "rejected_fraction": float(rejected.mean()) if len(rejected) else 0.0,
                        "accuracy_accepted": float(np.mean(y_pred[kept] == y_true[kept]))
                        if kept.any() else None}
    return m


def evaluation(clf: Classifier, data: str | os.PathLike, progress: ProgressFn | None = None
               ) -> tuple[dict[str, Any], Any, np.ndarray]:
    """:func:`evaluate`, also returning the predictions and true class indices."""
    images, skipped = load_labelled(data, clf.classes_)
    if len(images) == 0:
        raise DataError(f"{data}: no images to evaluate")
    pred = clf.predict_images(images.paths, progress, thumbs=True)  # the one pass
    where = {str(p): i for i, p in enumerate(images.paths)}
    index = np.asarray([where[str(src)] for src in pred.sources], dtype=int)
    final = clf.backbone_.final(pred.features) if pred.features is not None else None
    health = assess(entries_of("test", images), pred.facts, skipped + pred.skipped,
                    final, index, data=str(data), layout="evaluation images",
                    folders=folder_problems(data), trained_on=_trained_on(clf))
    if not len(pred.sources):
        raise DataError(f"{data}: none of the {len(images)} images could be read")
    label_of = {str(p): lab for p, lab in zip(images.paths, images.labels)}
    y_true = np.asarray([label_of[s] for s in pred.sources])
    result = scored_metrics(y_true, pred.logits, clf.temperature_, clf.classes_,
                            pred.rejected)
    result["skipped"] = [{"path": s.path, "reason": s.reason, "kind": s.kind}
                         for s in skipped + pred.skipped]
    result["health"] = health.to_dict(limit=50)
    return result, pred, y_true


def _trained_on(clf: Classifier) -> TrainedOn:
    """What ``clf`` was trained on, for leakage checks. Near duplicates are looked for only
    when the backbone is the pretrained one the training data was checked with (not after
    fine-tuning or training from scratch, which change the features)."""
    s = clf.summary_
    near = s.health.near_threshold if s.health is not None and not s.changed_features \
        else None
    ref = None
    if clf.ood_ is not None:  # unit rows of the final features, as the check compares
        ref = clf.backbone_.final(clf.ood_.reference_)
        ref = ref / (np.linalg.norm(ref, axis=1, keepdims=True) + 1e-12)
    return TrainedOn(set(clf.train_digests_), ref, near)


def evaluate(clf: Classifier, data: str | os.PathLike, progress: ProgressFn | None = None
             ) -> dict[str, Any]:
    """Evaluate ``clf`` on labelled images (held-out split of ``data`` when it has one).

    ``accuracy`` counts the class predictions (closed set); ``unknown`` says how many were
    rejected and the accuracy on the rest; ``calibration`` gives the expected calibration
    error of the raw and of the temperature-scaled probabilities on these images.

    Raises:
        DataError: missing data, labels the model does not know, or no readable image.
    """
    return evaluation(clf, data, progress)[0]
