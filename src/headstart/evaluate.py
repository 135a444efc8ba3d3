"""Measuring a trained classifier on labelled images.

:func:`evaluate` returns a JSON-serialisable dict: ``accuracy``, ``n_images``, ``classes``,
``per_class`` (precision, recall, F1, support), ``macro_f1``, ``confusion_matrix`` (rows:
true class, columns: predicted class, in ``classes`` order) and ``skipped`` files.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .data import load_labelled
from .errors import DataError
from .features import ProgressFn
from .model import Classifier

__all__ = ["evaluate", "classification_metrics"]


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


def evaluate(clf: Classifier, data: str | os.PathLike, progress: ProgressFn | None = None
             ) -> dict[str, Any]:
    """Evaluate ``clf`` on labelled images (held-out split of ``data`` when it has one).

    Raises:
        DataError: missing data, labels the model does not know, or no readable image.
    """
    images, skipped = load_labelled(data, clf.classes_)
    if len(images) == 0:
        raise DataError(f"{data}: no images to evaluate")
    pred = clf.predict_images(images.paths, progress)
    if not len(pred.sources):
        raise DataError(f"{data}: none of the {len(images)} images could be read")
    label_of = {str(p): lab for p, lab in zip(images.paths, images.labels)}
    y_true = np.asarray([label_of[s] for s in pred.sources])
    y_pred = np.argmax(pred.proba, axis=1)
    result = classification_metrics(y_true, y_pred, clf.classes_)
    result["skipped"] = [{"path": s.path, "reason": s.reason}
                         for s in skipped + pred.skipped]
    return result
