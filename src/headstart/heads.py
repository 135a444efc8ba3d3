"""New classification heads trained on frozen features (scikit-learn estimator API).

All heads take features ``X`` of shape ``(N, D)`` and integer labels ``y`` of shape ``(N,)``
with values in ``0..K-1``; ``predict_proba`` returns ``(N, K)``. A head owns its inference:
its ``kind`` names it, fitted heads predict with NumPy alone, export their parameters as a
flat dict of arrays (:meth:`state`, saved with safetensors, rebuilt with
:func:`head_from_state`) and build the same maths as a ``torch.nn.Module``
(:meth:`to_torch`, for export). A new kind of head touches this module only.

* :class:`LinearHead`: multinomial logistic regression on standardised features, L2
  strength chosen by stratified cross-validation.
* :class:`MLPHead`: the article's new head, ``Linear(D, hidden) -> ReLU -> Dropout ->
  Linear(hidden, K)``, trained with AdamW and early stopping on a held-out fold.
* :class:`AutoHead`: cross-validates both on the same folds and keeps the better one.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold, cross_val_score

from .bundle import expect_shapes
from .errors import HeadstartError, ModelError

__all__ = ["AutoHead", "LinearHead", "MLPHead", "make_head", "head_from_state", "HEADS",
           "softmax"]

logger = logging.getLogger(__name__)

def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits divided by ``temperature``: ``(N, K)``
    float32, computed in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise HeadstartError(f"X={X.shape}, y={y.shape}: expected X (N, D) and y (N,)")
    if len(np.unique(y)) < 2:
        raise HeadstartError(f"y: expected at least 2 classes, got {np.unique(y).tolist()}")
    return X, y


def _folds(y: np.ndarray, cv: int, seed: int) -> StratifiedKFold | None:
    """Stratified folds, as many as the smallest class allows (None if fewer than 2); at
    most 3 from 1000 images on, where each fold is large enough to be a stable estimate."""
    k = min(cv if len(y) < 1000 else min(cv, 3), int(np.bincount(y).min()))
    return StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None


CV_MAX_IMAGES = 2000


def _cv_subset(y: np.ndarray, seed: int) -> np.ndarray:
    """Rows used for cross-validation: all, or a stratified sample of CV_MAX_IMAGES (the
    final fit always uses every row; this bounds the cost of choosing hyper-parameters)."""
    if len(y) <= CV_MAX_IMAGES:
        return np.arange(len(y))
    from .data import stratified_split

    keep, _ = stratified_split(y, 1.0 - CV_MAX_IMAGES / len(y), seed)
    return keep


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-6] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


class _Head(ClassifierMixin, BaseEstimator):
    """Shared prediction code: subclasses set ``kind`` and implement ``fit``,
    ``decision_function``, ``state``, ``from_state`` and ``to_torch``."""

    kind: ClassVar[str] = ""

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
            raise ModelError(f"{_FILE}: scale must not contain zeros")
        self.mean_, self.scale_, self.classes_ = state["mean"], state["scale"], state["classes"]


_FILE = "head.safetensors"


def _buffers(module: Any, arrays: dict[str, np.ndarray]) -> None:
    import torch

    for name, value in arrays.items():
        module.register_buffer(name, torch.from_numpy(np.asarray(value, np.float32).copy()))


class LinearHead(_Head):
    """Multinomial logistic regression; ``C`` (inverse L2 strength) chosen by CV.

    ``kind``: ``"linear"``.

    Fitted attributes: ``classes_``, ``mean_``/``scale_`` (standardisation, ``(D,)``),
    ``coef_`` ``(K, D)``, ``intercept_`` ``(K,)``, ``C_``, ``cv_score_`` (mean CV accuracy
    of the chosen ``C``, NaN when a class is too small to cross-validate).
    """

    kind = "linear"

    def __init__(self, Cs: tuple[float, ...] = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0),
                 cv: int = 5, class_weight: str | None = "balanced", max_iter: int = 1000,
                 random_state: int = 0) -> None:
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LinearHead":
        X, y = _check_xy(X, y)
        self.classes_ = np.unique(y)
        self.mean_, self.scale_ = _standardiser(X)
        Xs = (X - self.mean_) / self.scale_
        sub = _cv_subset(y, self.random_state)
        Xc, yc = Xs[sub], y[sub]
        folds = _folds(yc, self.cv, self.random_state)
        if folds is None:
            self.C_, self.cv_score_ = 0.01, float("nan")
        else:
            scores = np.zeros((folds.get_n_splits(), len(self.Cs)))
            for f, (tr, te) in enumerate(folds.split(Xc, yc)):
                lr = self._logreg(warm_start=True)
                for j, C in enumerate(sorted(self.Cs)):
                    lr.set_params(C=C).fit(Xc[tr], yc[tr])
                    scores[f, j] = np.mean(lr.predict(Xc[te]) == yc[te])
            mean = scores.mean(axis=0)
            best = int(np.argmax(mean))  # the smallest C (strongest L2) among the best
            self.C_, self.cv_score_ = float(sorted(self.Cs)[best]), float(mean[best])
        lr = self._logreg(C=self.C_).fit(Xs, y)
        coef, intercept = lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32)
        if coef.shape[0] == 1:  # binary: p1 = sigmoid(z) = softmax([0, z])[1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1, np.float32), intercept])
        self.coef_, self.intercept_ = coef, intercept
        return self

    def _logreg(self, **kw: Any) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(class_weight=self.class_weight, max_iter=self.max_iter, **kw)

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(N, K)``."""
        return self._scaled(X) @ self.coef_.T + self.intercept_

    def state(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (see :meth:`from_state`)."""
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_,
                "intercept": self.intercept_, "classes": self.classes_.astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_classes: int, n_features: int
                   ) -> "LinearHead":
        """A fitted head from :meth:`state` arrays, checked to map ``n_features`` to
        ``n_classes``.

        Raises:
            ModelError: other keys or shapes.
        """
        k, d = n_classes, n_features
        expect_shapes(_FILE, state, {"mean": (d,), "scale": (d,), "coef": (k, d),
                                     "intercept": (k,), "classes": (k,)})
        head = cls()
        head.coef_, head.intercept_ = state["coef"], state["intercept"]
        head._set_common(state)
        return head

    @classmethod
    def from_weights(cls, weight: np.ndarray, bias: np.ndarray) -> "LinearHead":
        """A fitted head computing ``X @ weight.T + bias`` on raw features (``weight``
        ``(K, D)``, ``bias`` ``(K,)``), e.g. the head trained with a fine-tuned backbone."""
        k, d = weight.shape
        return cls.from_state({"mean": np.zeros(d, np.float32), "scale": np.ones(d, np.float32),
                               "coef": np.asarray(weight, np.float32),
                               "intercept": np.asarray(bias, np.float32),
                               "classes": np.arange(k, dtype=np.int64)}, k, d)

    def to_torch(self) -> Any:
        """The head as a ``torch.nn.Module``: features ``(N, D)`` -> logits ``(N, K)``."""
        import torch

        class Linear(torch.nn.Module):
            def __init__(self, head: LinearHead) -> None:
                super().__init__()
                _buffers(self, {"mean": head.mean_, "scale": head.scale_,
                                "coef": head.coef_, "intercept": head.intercept_})

            def forward(self, f: torch.Tensor) -> torch.Tensor:
                return ((f - self.mean) / self.scale) @ self.coef.T + self.intercept

        return Linear(self).eval()


class MLPHead(_Head):
    """``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, K)`` on standardised features.

    Trained full-batch with AdamW and a class-weighted cross-entropy; ``val_fraction`` of
    each class is held out for early stopping (``patience`` epochs) and the best epoch's
    weights are kept. Fitted attributes: ``classes_``, ``mean_``, ``scale_``, ``w1_``
    ``(hidden, D)``, ``b1_``, ``w2_`` ``(K, hidden)``, ``b2_``, ``n_epochs_``.
    """

    kind = "mlp"

    def __init__(self, hidden: int = 256, dropout: float = 0.5, lr: float = 1e-3,
                 weight_decay: float = 1e-2, max_epochs: int = 300, patience: int = 30,
                 val_fraction: float = 0.15, class_weight: str | None = "balanced",
                 random_state: int = 0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "MLPHead":
        import torch
        from torch import nn

        from .data import stratified_split

        X, y = _check_xy(X, y)
        self.classes_ = np.unique(y)
        k = len(self.classes_)
        self.mean_, self.scale_ = _standardiser(X)
        Xs = (X - self.mean_) / self.scale_
        yi = np.searchsorted(self.classes_, y)
        tr, va = stratified_split(yi, self.val_fraction, self.random_state)
        if len(va) == 0:
            tr = va = np.arange(len(yi))
        counts = np.bincount(yi[tr], minlength=k).astype(np.float32)
        weight = (len(tr) / (k * np.maximum(counts, 1))) if self.class_weight == "balanced" \
            else np.ones(k, np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(),
                                nn.Dropout(self.dropout), nn.Linear(self.hidden, k))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr,
                                    weight_decay=self.weight_decay)
            loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weight, dtype=torch.float32))
            xt, yt = torch.from_numpy(Xs[tr]), torch.from_numpy(yi[tr])
            xv, yv = torch.from_numpy(Xs[va]), torch.from_numpy(yi[va])
            best = (-1.0, float("inf"))
            best_state, best_epoch, since = None, 0, 0
            for epoch in range(self.max_epochs):
                net.train()
                opt.zero_grad()
                loss_fn(net(xt), yt).backward()
                opt.step()
                net.eval()
                with torch.no_grad():
                    out = net(xv)
                    acc = float((out.argmax(1) == yv).float().mean())
                    vloss = float(nn.functional.cross_entropy(out, yv))
                if (acc, -vloss) > (best[0], -best[1]):
                    best, best_epoch, since = (acc, vloss), epoch + 1, 0
                    best_state = {n: p.detach().clone() for n, p in net.state_dict().items()}
                else:
                    since += 1
                    if since >= self.patience:
                        break
            net.load_state_dict(best_state)
        self.w1_ = net[0].weight.detach().numpy().copy()
        self.b1_ = net[0].bias.detach().numpy().copy()
        self.w2_ = net[3].weight.detach().numpy().copy()
        self.b2_ = net[3].bias.detach().numpy().copy()
        self.n_epochs_ = best_epoch
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(N, K)``."""
        h = np.maximum(self._scaled(X) @ self.w1_.T + self.b1_, 0.0)
        return h @ self.w2_.T + self.b2_

    def state(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (see :meth:`from_state`)."""
        return {"mean": self.mean_, "scale": self.scale_, "w1": self.w1_, "b1": self.b1_,
                "w2": self.w2_, "b2": self.b2_, "classes": self.classes_.astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_classes: int, n_features: int
                   ) -> "MLPHead":
        """A fitted head from :meth:`state` arrays, checked to map ``n_features`` to
        ``n_classes`` (any hidden width).

        Raises:
            ModelError: other keys or shapes.
        """
        k, d = n_classes, n_features
        h = state["w1"].shape[0] if "w1" in state and state["w1"].ndim == 2 else -1
        expect_shapes(_FILE, state, {"mean": (d,), "scale": (d,), "w1": (h, d), "b1": (h,),
                                     "w2": (k, h), "b2": (k,), "classes": (k,)})
        head = cls(hidden=int(h))
        head.w1_, head.b1_, head.w2_, head.b2_ = (state[n] for n in ("w1", "b1", "w2", "b2"))
        head._set_common(state)
        return head

    def to_torch(self) -> Any:
        """The head as a ``torch.nn.Module``: features ``(N, D)`` -> logits ``(N, K)``."""
        import torch

        class MLP(torch.nn.Module):
            def __init__(self, head: MLPHead) -> None:
                super().__init__()
                _buffers(self, {"mean": head.mean_, "scale": head.scale_, "w1": head.w1_,
                                "b1": head.b1_, "w2": head.w2_, "b2": head.b2_})

            def forward(self, f: torch.Tensor) -> torch.Tensor:
                h = torch.relu(((f - self.mean) / self.scale) @ self.w1.T + self.b1)
                return h @ self.w2.T + self.b2

        return MLP(self).eval()


class AutoHead(_Head):
    """Cross-validates :class:`LinearHead` and :class:`MLPHead` on the same stratified folds
    (of at most ``CV_MAX_IMAGES`` rows) and keeps the better (the linear one on ties).

    Fitted attributes: ``best_`` (the chosen, refitted head), ``kind_`` (its ``kind``,
    ``"linear"`` or ``"mlp"``), ``cv_scores_`` (mean CV accuracy of each candidate).
    """

    kind = "auto"

    def __init__(self, cv: int = 5, class_weight: str | None = "balanced",
                 random_state: int = 0) -> None:
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "AutoHead":
        X, y = _check_xy(X, y)
        self.classes_ = np.unique(y)
        linear = LinearHead(cv=self.cv, class_weight=self.class_weight,
                            random_state=self.random_state).fit(X, y)
        sub = _cv_subset(y, self.random_state)  # the rows LinearHead cross-validated on
        folds = _folds(y[sub], self.cv, self.random_state)
        if folds is None:
            self.best_, self.kind_, self.cv_scores_ = linear, "linear", {}
            return self
        mlp = MLPHead(class_weight=self.class_weight, random_state=self.random_state)
        mlp_score = float(cross_val_score(clone(mlp), X[sub], y[sub], cv=folds).mean())
        self.cv_scores_ = {"linear": linear.cv_score_, "mlp": mlp_score}
        if mlp_score > linear.cv_score_:
            self.best_, self.kind_ = mlp.fit(X, y), "mlp"
        else:
            self.best_, self.kind_ = linear, "linear"
        logger.info("auto head: CV accuracy %s -> %s", self.cv_scores_, self.kind_)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.best_.decision_function(X)


_KINDS: dict[str, type[_Head]] = {"linear": LinearHead, "mlp": MLPHead}
HEADS = ("auto",) + tuple(_KINDS)


def make_head(kind: str = "auto", random_state: int = 0) -> _Head:
    """A new, unfitted head by name: ``auto``, ``linear`` or ``mlp``.

    Raises:
        HeadstartError: an unknown name.
    """
    if kind == "auto":
        return AutoHead(random_state=random_state)
    if kind not in _KINDS:
        raise HeadstartError(f"head: expected one of {', '.join(HEADS)}, got {kind!r}")
    return _KINDS[kind](random_state=random_state)


def head_from_state(kind: str, state: dict[str, np.ndarray], n_classes: int,
                    n_features: int) -> _Head:
    """Rebuild a fitted head of ``kind`` from its :meth:`state` arrays, checked to map
    ``n_features`` features to ``n_classes`` logits.

    Raises:
        ModelError: an unknown kind, or arrays with other keys or shapes.
    """
    if kind not in _KINDS:
        raise ModelError(f"unknown saved head kind {kind!r}")
    return _KINDS[kind].from_state(state, n_classes, n_features)
