"""The base of every head: the head protocol (what a kind declares, how it is made,
fitted, measured, refitted, saved and exported), prediction, scoring, and the helpers heads
share (input checks, standardisation, folds, one thread). See :mod:`headstart.heads`."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from ..errors import HeadstartError, ModelError

__all__ = ["CV_MAX_IMAGES", "FEW_SHOT_MAX_PER_CLASS", "FILE", "Folds", "Head", "buffers", "check_xy", "cv_subset",
           "log_loss", "logits2", "one_thread", "softmax", "standardiser", "stratified_folds"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits divided by ``temperature``: ``(N, K)``
    float32, computed in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices ``y`` ``(N,)`` under ``logits``
    ``(N, K)``."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise HeadstartError(f"X={X.shape}, y={y.shape}: expected X (N, D) and y (N,)")
    if len(np.unique(y)) < 2:
        raise HeadstartError(param="y", expected="at least 2 classes", got=np.unique(y).tolist())
    return X, y


Folds = list[tuple[np.ndarray, np.ndarray]]


def stratified_folds(y: np.ndarray, cv: int, seed: int) -> Folds | None:
    """``(train, test)`` row indices of stratified folds, as many as the smallest class
    allows (None if fewer than 2); at most 3 from 1000 images on, where each fold is large
    enough to be a stable estimate. Each class is shuffled (seeded) and dealt round the
    folds; the same folds serve every candidate head."""
    y = np.asarray(y)
    k = min(cv if len(y) < 1000 else min(cv, 3), int(np.bincount(y).min()))
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (np.arange(len(idx)) + offset) % k  # rotate: folds of even size
        offset += len(idx)
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def one_thread() -> Any:
    """BLAS and OpenMP limited to one thread: head fits are small, and thread pools spin."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def logits2(z: np.ndarray) -> np.ndarray:
    """Decision values as ``(N, K)`` logits (a binary model gives ``(N,)``: ``[0, z]``)."""
    return np.stack([np.zeros_like(z), z], axis=1) if z.ndim == 1 else z


CV_MAX_IMAGES = 2000


def cv_subset(y: np.ndarray, seed: int) -> np.ndarray:
    """Rows used for cross-validation: all, or a stratified sample of CV_MAX_IMAGES (the
    final fit always uses every row; this bounds the cost of choosing hyper-parameters)."""
    if len(y) <= CV_MAX_IMAGES:
        return np.arange(len(y))
    from ..io.dataset import stratified_split

    keep, _ = stratified_split(y, 1.0 - CV_MAX_IMAGES / len(y), seed)
    return keep


def standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-6] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


# Extra features (the tapped blocks, the ImageNet block) are read and tried up to this many
# images in the smallest class: they pay at 1-20 (few-shot); beyond, they only cost time.
FEW_SHOT_MAX_PER_CLASS = 40


class Head:
    """The head protocol and shared code: the scikit-learn parameter protocol
    (``get_params`` / ``set_params``, so ``sklearn.base.clone`` works, without importing
    scikit-learn to predict), prediction and scoring.

    A kind declares ``kind`` (its registered name), ``help`` (one line for the CLI and the
    studio) and ``uses_blocks`` (whether it wants the outputs of tapped intermediate blocks
    after the final features, and the ImageNet block, see :meth:`create`); ``saved`` is
    False for a kind that chooses among others (``auto``: what it keeps is saved).
    It implements ``fit(X, y)``, ``decision_function``, ``state``, ``from_state`` and
    ``to_torch``; :meth:`result`, :meth:`cv_scores` and :meth:`refit_params` have defaults.
    """

    kind: ClassVar[str] = ""
    help: ClassVar[str] = ""
    uses_blocks: ClassVar[bool] = False
    saved: ClassVar[bool] = True
    oof_logits_: np.ndarray | None = None
    oof_rows_: np.ndarray | None = None
    oof_scale_: float = 1.0  # final head's logit scale over the fold heads' (see LinearHead)

    @classmethod
    def create(cls, random_state: int = 0,
               imagenet: tuple[np.ndarray, np.ndarray] | None = None,
               blocks: tuple[int, ...] = ()) -> "Head":
        """A new head for ``fit``: ``imagenet`` (the backbone's ImageNet classifier) and
        ``blocks`` (the widths of tapped blocks at the end of each row) are offered to kinds
        that ``uses_blocks``; others ignore ``imagenet`` and refuse ``blocks``."""
        if blocks:
            raise HeadstartError(f"the {cls.kind} head takes the final features only",
                                 param="blocks")
        return cls(random_state=random_state)  # type: ignore[call-arg]

    def result(self) -> "Head":
        """The fitted head to keep and save (a kind that chooses returns its choice)."""
        return self

    def cv_scores(self) -> dict[str, float]:
        """Mean cross-validated accuracy of each candidate tried (empty when none was)."""
        score = getattr(self, "cv_score_", float("nan"))
        return {self.kind: float(score)} if score == score else {}

    def refit_params(self) -> dict[str, Any]:
        """Parameters for a head of this kind that fits again with the settings this one
        chose (no new cross-validation): e.g. to measure it on other rows."""
        return self.get_params()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters and their values."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> "Head":
        for name, value in params.items():
            if name not in self.get_params():
                raise HeadstartError(f"not a parameter of {type(self).__name__}", param=name)
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def chosen(self) -> dict[str, Any]:
        """What fitting chose (settings picked by cross-validation), for the training
        record; the constructor parameters by default."""
        return {k: v for k, v in self.get_params().items()
                if isinstance(v, (int, float, str)) and k != "random_state"}

    def score(self, X: Any, y: Any) -> float:
        """Accuracy on ``X``, ``y``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, K)``."""
        return softmax(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """Class indices ``(N,)``."""
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def _scaled(self, X: Any) -> np.ndarray:
        return (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_

    def _set_common(self, state: dict[str, np.ndarray]) -> None:
        if np.any(state["scale"] == 0):
            raise ModelError(f"{FILE}: scale must not contain zeros")
        self.mean_, self.scale_, self.classes_ = state["mean"], state["scale"], state["classes"]


FILE = "head.safetensors"


def buffers(module: Any, arrays: dict[str, np.ndarray]) -> None:
    import torch

    for name, value in arrays.items():
        module.register_buffer(name, torch.from_numpy(np.asarray(value, np.float32).copy()))
