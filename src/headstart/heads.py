"""New classification heads trained on frozen features (the scikit-learn estimator API).

All heads take features ``X`` of shape ``(N, D)`` and integer labels ``y`` of shape ``(N,)``
with values in ``0..K-1``; ``predict_proba`` returns ``(N, K)``. A head owns its inference:
its ``kind`` names it, fitted heads predict with NumPy alone, export their parameters as a
flat dict of arrays (:meth:`state`, saved with safetensors, rebuilt with
:func:`head_from_state`) and build the same maths as a ``torch.nn.Module``
(:meth:`to_torch`, for export). A new kind of head touches this module only.

* :class:`LinearHead`: multinomial logistic regression on standardised features; its L2
  strength is chosen by stratified cross-validation along one warm-started path of ``C``
  values per fold.
* :class:`MLPHead`: the article's new head, ``Linear(D, hidden) -> ReLU -> Dropout ->
  Linear(hidden, K)``, trained with AdamW and early stopping on a held-out fold.
* :class:`AutoHead`: both on the same folds, keeping the better; the MLP is tried only from
  :data:`MLP_MIN_PER_CLASS` images per class, below which it has not been seen to win.

Cross-validated heads keep their out-of-fold logits (``oof_logits_`` for the rows
``oof_rows_``): the validation estimate and the temperature come from them, so no head is
ever cross-validated inside another cross-validation. Fits are cheap by design: the
heads run single-threaded (thread pools only cost time on problems this small).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._head import (FILE, Folds, Head, buffers, check_xy, cv_subset, logits2,
                    one_thread, softmax, standardiser, stratified_folds)
from ._logistic import Logistic, balanced_weights, fit_logistic, project
from .bundle import expect_shapes
from .errors import HeadstartError, ModelError

__all__ = ["AutoHead", "LinearHead", "MLPHead", "MLP_MIN_PER_CLASS", "WIDE_CS", "make_head",
           "head_from_state", "HEADS", "power_l2", "softmax", "stratified_folds"]

logger = logging.getLogger(__name__)

# Below this many images in its smallest class the MLP is not tried: on all seven shared
# datasets (120 to 1,200 images per class) it never beat the linear head in CV.
MLP_MIN_PER_CLASS = 150
NORMALIZE = ("power-l2", "standard")

# C grid of the linear head: half decades from strong to weak regularisation (weak matters
# at 1-20 images per class, where a wide search on normalised features wins).
WIDE_CS = tuple(float(10.0 ** (e / 2)) for e in range(-8, 7))
NORM_SCALE = float(np.sqrt(1280) / 4)
PATH_PATIENCE = 3  # C values past the log-loss minimum before the path stops  # unit vectors scaled so that C = 1 is a sane default


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of class indices ``y`` ``(N,)`` under ``logits``
    ``(N, K)``."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def power_l2(X: np.ndarray, scale: float = NORM_SCALE) -> np.ndarray:
    """Signed square root of each feature, then each row scaled to length ``scale``: the
    normalisation that works best at few shots (+2 to +4 points over standardising on the
    shared datasets at 1-20 images per class)."""
    Z = np.sign(X) * np.sqrt(np.abs(X))
    return Z * (scale / (np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12))


class LinearHead(Head):
    """Multinomial logistic regression; ``C`` (inverse L2 strength) chosen by CV: the C
    with the lowest out-of-fold log-loss (at 1-20 images per class many C values tie on
    accuracy; log-loss separates them, and the chosen head's probabilities come out nearly
    calibrated: test ECE 0.059 at 5 and 0.036 at 20 shots over the shared datasets, against
    0.40 and 0.15 for the smallest C among the most accurate, at equal accuracy).

    ``kind``: ``"linear"``. ``normalize``: ``"power-l2"`` (signed square root, then unit
    rows, see :func:`power_l2`) or ``"standard"`` (zero mean, unit variance per feature).
    Without cross-validation (a class with one image) ``C`` is 1 (0.01 standardised).

    Fitted attributes: ``classes_``, ``mean_``/``scale_`` (standardisation ``(D,)``; zeros
    and ones with ``power-l2``), ``coef_`` ``(K, D)``, ``intercept_`` ``(K,)``, ``C_``,
    ``cv_score_`` (mean CV accuracy of the chosen ``C``, NaN when a class is too small to
    cross-validate), ``cv_path_`` (``{C: (accuracy, log-loss)}`` out of fold).
    """

    kind = "linear"

    def __init__(self, Cs: tuple[float, ...] = WIDE_CS, cv: int = 5,
                 class_weight: str | None = "balanced", max_iter: int = 1000,
                 random_state: int = 0, normalize: str = "power-l2") -> None:
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.normalize = normalize

    def _normalised(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.normalize == "power-l2":
            return power_l2(X)
        return (X - self.mean_) / self.scale_

    def fit(self, X: Any, y: Any, folds: Folds | None = None) -> "LinearHead":
        """Standardise, choose ``C`` by cross-validation (``folds`` of the rows
        cross-validated on, or new ones), then fit on every row.

        Fitted attributes besides the parameters: ``oof_logits_`` ``(n, K)``, the
        out-of-fold logits of the chosen ``C`` for the rows ``oof_rows_`` (None without
        cross-validation), and ``oof_scale_``: how much larger the final head's weights are
        than the fold heads' (a temperature fitted on the out-of-fold logits is multiplied
        by it, about 1.1 at 5-20 images per class).
        """
        X, y = check_xy(X, y)
        if self.normalize not in NORMALIZE:
            raise HeadstartError(f"normalize: expected one of {', '.join(NORMALIZE)}, "
                                 f"got {self.normalize!r}")
        self.classes_ = np.unique(y)
        yi = np.searchsorted(self.classes_, y)
        if self.normalize == "standard":
            self.mean_, self.scale_ = standardiser(X)
        else:
            self.mean_ = np.zeros(X.shape[1], np.float32)
            self.scale_ = np.ones(X.shape[1], np.float32)
        Xs = self._normalised(X).astype(np.float64)
        sub = cv_subset(yi, self.random_state)
        Xc, yc = Xs[sub], yi[sub]
        folds = folds if folds is not None else stratified_folds(yc, self.cv,
                                                                  self.random_state)
        Cs = sorted(self.Cs)
        with one_thread():
            if folds is None:
                self.C_ = 0.01 if self.normalize == "standard" else 1.0
                self.cv_score_ = float("nan")
                self.cv_path_: dict[float, tuple[float, float]] = {}
                self.oof_logits_ = self.oof_rows_ = None
            else:
                scores = np.zeros((len(folds), len(Cs)))
                norms = np.zeros((len(folds), len(Cs)))
                loss = np.full(len(Cs), np.inf)
                oof = np.zeros((len(Cs), len(yc), len(self.classes_)), np.float32)
                spaces = [project(Xc[tr]) for tr, _ in folds]
                tests = [Xc[te] @ V if V is not None else Xc[te]
                         for (_, te), (_, V) in zip(folds, spaces)]
                models: list[Logistic | None] = [None] * len(folds)
                for j, C in enumerate(Cs):  # one warm-started path along C per fold
                    for f, (tr, te) in enumerate(folds):
                        models[f] = m = self._solve(spaces[f][0], yc[tr], C, models[f])
                        oof[j, te] = logits2(_logits(m, tests[f]))
                        scores[f, j] = np.mean(oof[j, te].argmax(axis=1) == yc[te])
                        norms[f, j] = np.linalg.norm(m.W)
                    loss[j] = log_loss(oof[j], yc)
                    if j - int(np.argmin(loss[:j + 1])) >= PATH_PATIENCE:
                        break  # PATH_PATIENCE weaker C values without a lower log-loss
                mean = scores.mean(axis=0)
                best = int(np.argmin(loss))  # accuracy ties often; log-loss hardly ever
                self.C_, self.cv_score_ = float(Cs[best]), float(mean[best])
                self.cv_path_ = {float(C): (float(a), float(l))
                                 for C, a, l in zip(Cs, mean, loss) if np.isfinite(l)}
                self.oof_logits_, self.oof_rows_ = oof[best], sub
            Z, V = project(Xs)
            model = self._solve(Z, yi, self.C_, None)
            # the final head, fitted on every row, is more confident than the fold heads
            # whose logits calibrate it: by the ratio of their weights' norms
            self.oof_scale_ = (float(np.linalg.norm(model.W) / max(norms[:, best].mean(),
                                                                   1e-12))
                               if folds is not None else 1.0)
        coef = (model.W @ V.T if V is not None else model.W).astype(np.float32)
        intercept = model.b.astype(np.float32)
        if coef.shape[0] == 1:  # binary: p1 = sigmoid(z) = softmax([0, z])[1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1, np.float32), intercept])
        self.coef_, self.intercept_ = coef, intercept
        return self

    def _solve(self, Z: np.ndarray, y: np.ndarray, C: float, init: Logistic | None
               ) -> Logistic:
        k = len(self.classes_)
        weight = balanced_weights(y, k) if self.class_weight == "balanced" else None
        return fit_logistic(Z, y, k, C, weight, init, max_iter=self.max_iter)

    def chosen(self) -> dict[str, Any]:
        """What fitting chose: the normalisation, ``C`` and the out-of-fold accuracy and
        log-loss of each C tried (empty without cross-validation)."""
        return {"normalize": self.normalize, "C": self.C_ if self.C_ == self.C_ else None,
                "chosen_by": "out-of-fold log-loss" if self.cv_path_ else "default",
                "cv_by_C": {f"{C:g}": {"accuracy": round(a, 4), "log_loss": round(l, 4)}
                            for C, (a, l) in self.cv_path_.items()}}

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(N, K)``."""
        return self._normalised(X) @ self.coef_.T + self.intercept_

    def state(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (see :meth:`from_state`): ``power_l2``
        ``(1,)`` (the row length) for power-l2 heads, ``mean``/``scale`` for standardised
        ones."""
        norm = ({"power_l2": np.asarray([NORM_SCALE], np.float32)}
                if self.normalize == "power-l2" else {"mean": self.mean_, "scale": self.scale_})
        return {**norm, "coef": self.coef_, "intercept": self.intercept_,
                "classes": self.classes_.astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_classes: int, n_features: int
                   ) -> "LinearHead":
        """A fitted head from :meth:`state` arrays (of any headstart version), checked to
        map ``n_features`` to ``n_classes``.

        Raises:
            ModelError: other keys or shapes.
        """
        k, d = n_classes, n_features
        norm = {"power_l2": (1,)} if "power_l2" in state else {"mean": (d,), "scale": (d,)}
        expect_shapes(FILE, state, {**norm, "coef": (k, d), "intercept": (k,),
                                    "classes": (k,)})
        head = cls(normalize="power-l2" if "power_l2" in state else "standard")
        head.coef_, head.intercept_ = state["coef"], state["intercept"]
        head.C_, head.cv_score_, head.cv_path_ = float("nan"), float("nan"), {}  # not stored
        head.oof_scale_ = 1.0
        if "power_l2" in state:
            if not np.isclose(float(state["power_l2"][0]), NORM_SCALE):
                raise ModelError(f"{FILE}: power_l2 must be {NORM_SCALE:.6f}")
            state = {**state, "mean": np.zeros(d, np.float32), "scale": np.ones(d, np.float32)}
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
                self.power_l2 = head.normalize == "power-l2"
                buffers(self, {"mean": head.mean_, "scale": head.scale_,
                               "coef": head.coef_, "intercept": head.intercept_})

            def forward(self, f: torch.Tensor) -> torch.Tensor:
                if self.power_l2:
                    z = torch.sign(f) * torch.sqrt(torch.abs(f))
                    z = z * (NORM_SCALE / (z.norm(dim=1, keepdim=True) + 1e-12))
                else:
                    z = (f - self.mean) / self.scale
                return z @ self.coef.T + self.intercept

        return Linear(self).eval()


class MLPHead(Head):
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
        with one_thread():
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> "MLPHead":
        import torch
        from torch import nn

        from .data import stratified_split

        X, y = check_xy(X, y)
        self.classes_ = np.unique(y)
        k = len(self.classes_)
        self.mean_, self.scale_ = standardiser(X)
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
        expect_shapes(FILE, state, {"mean": (d,), "scale": (d,), "w1": (h, d), "b1": (h,),
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
                buffers(self, {"mean": head.mean_, "scale": head.scale_, "w1": head.w1_,
                                "b1": head.b1_, "w2": head.w2_, "b2": head.b2_})

            def forward(self, f: torch.Tensor) -> torch.Tensor:
                h = torch.relu(((f - self.mean) / self.scale) @ self.w1.T + self.b1)
                return h @ self.w2.T + self.b2

        return MLP(self).eval()


class AutoHead(Head):
    """Cross-validates :class:`LinearHead` and, from :data:`MLP_MIN_PER_CLASS` images per
    class on, :class:`MLPHead` on the same stratified folds (of at most ``CV_MAX_IMAGES``
    rows), and keeps the better (the linear one on ties).

    Fitted attributes: ``best_`` (the chosen, refitted head, with its out-of-fold logits),
    ``kind_`` (its ``kind``, ``"linear"`` or ``"mlp"``), ``cv_scores_`` (mean CV accuracy
    of each candidate that was tried).
    """

    kind = "auto"

    def __init__(self, cv: int = 5, class_weight: str | None = "balanced",
                 random_state: int = 0) -> None:
        self.cv = cv
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "AutoHead":
        X, y = check_xy(X, y)
        self.classes_ = np.unique(y)
        sub = cv_subset(y, self.random_state)  # the rows cross-validated on
        folds = stratified_folds(y[sub], self.cv, self.random_state)
        linear = LinearHead(cv=self.cv, class_weight=self.class_weight,
                            random_state=self.random_state).fit(X, y, folds)
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


def _logits(model: Logistic, Z: np.ndarray) -> np.ndarray:
    z = Z @ model.W.T + model.b
    return z[:, 0] if z.shape[1] == 1 else z


_KINDS: dict[str, type[Head]] = {"linear": LinearHead, "mlp": MLPHead}
HEADS = ("auto",) + tuple(_KINDS)


def make_head(kind: str = "auto", random_state: int = 0) -> Head:
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
                    n_features: int) -> Head:
    """Rebuild a fitted head of ``kind`` from its :meth:`state` arrays, checked to map
    ``n_features`` features to ``n_classes`` logits.

    Raises:
        ModelError: an unknown kind, or arrays with other keys or shapes.
    """
    if kind not in _KINDS:
        raise ModelError(f"unknown saved head kind {kind!r}")
    return _KINDS[kind].from_state(state, n_classes, n_features)
