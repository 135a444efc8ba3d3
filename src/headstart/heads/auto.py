"""The ``auto`` head: the linear head and, with enough images, the MLP, cross-validated on
the same folds; the better is kept (see :class:`AutoHead`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .base import Head, check_xy, cv_subset, stratified_folds
from .linear import LinearHead
from .mlp import MLPHead

__all__ = ["AutoHead", "MLP_MIN_PER_CLASS"]

logger = logging.getLogger(__name__)

# Below this many images in its smallest class the MLP is not tried: on all seven shared
# datasets (120 to 1,200 images per class) it never beat the linear head in CV.
MLP_MIN_PER_CLASS = 150


class AutoHead(Head):
    """Cross-validates :class:`LinearHead` and, from :data:`MLP_MIN_PER_CLASS` images per
    class on, :class:`MLPHead` on the same stratified folds (of at most ``CV_MAX_IMAGES``
    rows), and keeps the better (the linear one on ties).

    Fitted attributes: ``best_`` (the chosen, refitted head, with its out-of-fold logits),
    ``kind_`` (its ``kind``, ``"linear"`` or ``"mlp"``), ``cv_scores_`` (mean CV accuracy
    of each candidate that was tried).
    """

    kind = "auto"
    help = "the linear head, or the MLP where it wins in cross-validation (default)"
    uses_blocks = True
    saved = False

    def __init__(self, cv: int = 5, class_weight: str | None = "balanced",
                 random_state: int = 0,
                 imagenet: tuple[np.ndarray, np.ndarray] | None = None,
                 blocks: tuple[int, ...] = ()) -> None:
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state
        self.imagenet = imagenet
        self.blocks = blocks

    @classmethod
    def create(cls, random_state: int = 0,
               imagenet: tuple[np.ndarray, np.ndarray] | None = None,
               blocks: tuple[int, ...] = ()) -> "AutoHead":
        return cls(random_state=random_state, imagenet=imagenet, blocks=blocks)

    def result(self) -> Head:
        return self.best_

    def cv_scores(self) -> dict[str, float]:
        return dict(self.cv_scores_)

    def fit(self, X: Any, y: Any) -> "AutoHead":
        X, y = check_xy(X, y)
        self.classes_ = np.unique(y)
        sub = cv_subset(y, self.random_state)  # the rows cross-validated on
        folds = stratified_folds(y[sub], self.cv, self.random_state)
        linear = LinearHead(cv=self.cv, class_weight=self.class_weight,
                            random_state=self.random_state,
                            imagenet=self.imagenet, blocks=self.blocks).fit(X, y, folds)
        self.best_, self.kind_ = linear, "linear"
        self.cv_scores_ = {"linear": linear.cv_score_} if folds is not None else {}
        if folds is None or np.bincount(y).min() < MLP_MIN_PER_CLASS:
            return self
        params = dict(class_weight=self.class_weight, random_state=self.random_state)
        Xc, yc = X[sub], y[sub]
        oof = np.zeros((len(yc), len(self.classes_)), np.float32)
        scores = []
        for tr, te in folds:
            m = MLPHead(**params).fit(Xc[tr], yc[tr])
            oof[te] = m.decision_function(Xc[te])
            scores.append(float(np.mean(m.predict(Xc[te]) == yc[te])))
        self.cv_scores_["mlp"] = float(np.mean(scores))
        if self.cv_scores_["mlp"] > linear.cv_score_:
            self.best_, self.kind_ = MLPHead(**params).fit(X, y), "mlp"
            self.best_.oof_logits_, self.best_.oof_rows_ = oof, sub
        logger.info("auto head: CV accuracy %s -> %s", self.cv_scores_, self.kind_)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.best_.decision_function(X)
