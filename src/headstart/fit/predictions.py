"""Predictions: calibrated probabilities, unknown scores and labels from features, and the
one record a prediction becomes (the CLI, ``serve``, streaming, Ray and the studio all
write :meth:`Predictions.record`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backbone.features import FileFacts
from ..heads import softmax
from ..io.dataset import Skipped

__all__ = ["UNKNOWN", "Predictions", "answer"]

UNKNOWN = "unknown"


@dataclass
class Predictions:
    """Predictions for the usable images among the inputs.

    Attributes:
        sources: the M usable inputs, in input order (paths as strings).
        proba: ``(M, K)`` class probabilities.
        labels: the M predicted class names.
        classes: the K class names (column order of ``proba``).
        skipped: inputs that could not be decoded, with reasons.
        logits: ``(M, K)`` head outputs before calibration (``proba`` is
            ``softmax(logits / temperature)``).
        features: ``(M, D)`` backbone features.
        ood_score: ``(M,)`` unlikeness to the training images; ``rejected``: ``(M,)``
            whether it is above the model's threshold (the label is then ``unknown``).
        facts: ``(N,)`` what the pass over each input file learned (hash, header,
            thumbnail), for every input in input order.
    """

    sources: list[str]
    proba: np.ndarray
    labels: list[str]
    classes: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    logits: np.ndarray | None = None
    ood_score: np.ndarray | None = None
    rejected: np.ndarray | None = None
    features: np.ndarray | None = None
    facts: list[FileFacts] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many images were predicted as each class (and as ``unknown``)."""
        names = self.classes + ([UNKNOWN] if UNKNOWN in self.labels else [])
        return {c: self.labels.count(c) for c in names}

    def record(self, i: int, key: str = "path", source: str | None = None) -> dict[str, Any]:
        """Prediction ``i`` as the JSON object every output writes: ``{key: source,
        "label", "probability" (the top class's), "probabilities" {class: p},
        "unknown", "unknown_score"}`` (``source``: instead of ``sources[i]``)."""
        p = self.proba[i]
        return {key: str(self.sources[i]) if source is None else source,
                "label": self.labels[i], "probability": float(p.max()),
                "probabilities": {c: float(v) for c, v in zip(self.classes, p)},
                "unknown": bool(self.rejected[i]) if self.rejected is not None else False,
                "unknown_score": float(self.ood_score[i]) if self.ood_score is not None
                else 0.0}

    def records(self, key: str = "path") -> list[dict[str, Any]]:
        """Every prediction as :meth:`record`, in input order."""
        return [self.record(i, key) for i in range(len(self.sources))]


def answer(head: Any, temperature: float, ood: Any, classes: list[str], unknown: bool,
           X: np.ndarray, sources: list[Any], skipped: list[Skipped]) -> Predictions:
    """Calibrated probabilities, unknown scores and labels from ``(M, D)`` features ``X``
    (``ood``: the unknown detector, None for a model saved without one; ``unknown``: label
    the images it rejects ``unknown``)."""
    logits = head.decision_function(X) if len(X) else np.zeros((0, len(classes)), np.float32)
    proba = softmax(logits, temperature)
    if ood is None:
        score, rejected = np.zeros(len(proba), np.float32), np.zeros(len(proba), bool)
    else:
        score = ood.score(X)
        rejected = score > ood.threshold_ if unknown else np.zeros(len(proba), bool)
    labels = [UNKNOWN if r else classes[int(i)] for i, r in zip(np.argmax(proba, axis=1),
                                                                 rejected)]
    return Predictions(sources, proba, labels, list(classes), skipped, logits, score,
                       rejected, X)
