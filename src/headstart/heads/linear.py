"""The linear head: multinomial logistic regression on frozen features (see
:class:`LinearHead`), the default kind and the one few-shot data needs.

Features ``X`` are ``(N, D)``, labels ``y`` ``(N,)`` with values in ``0..K-1``;
``predict_proba`` returns ``(N, K)``. Power-L2 (or standardised) features, optionally with
the backbone's ImageNet class probabilities appended (images near ImageNet) or with the
grid-pooled outputs of tapped intermediate blocks weighed in (images far from it); the L2
strength is chosen by out-of-fold log-loss along one warm-started path of ``C`` values per
fold. See :mod:`headstart.heads` for the head protocol and the registry of kinds.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .._threads import cores
from ..errors import HeadstartError, ModelError
from ..io.bundle import expect_shapes
from .base import (FEW_SHOT_MAX_PER_CLASS, FILE, Folds, Head, buffers, check_xy, cv_subset,
                   log_loss, logits2, one_thread, standardiser, stratified_folds)
from .normalise import (NORM_SCALE, imagenet_block, power_l2, tapped_blocks,
                        torch_imagenet_block, torch_power_l2, torch_tapped_blocks)
from .solvers import Logistic, balanced_weights, fit_logistic, fold_coordinates, project

__all__ = ["BLOCK_WEIGHTS", "LinearHead", "WIDE_CS"]

logger = logging.getLogger(__name__)

NORMALIZE = ("power-l2", "standard")
# The weights tried for the tapped blocks (0: the final features alone); why these two:
# benchmarks/README.md, "Figures behind choices in the code".
BLOCK_WEIGHTS = (0.0, 1.0)

# C grid of the linear head: decades from strong to weak regularisation (weak matters at
# 1-20 images per class, where a wide search on normalised features wins), refined by the
# half decades beside the best (a full half-decade path costs twice the time).
WIDE_CS = tuple(float(10.0 ** e) for e in range(-4, 4))
PATH_PATIENCE = 2  # C values past the log-loss minimum before the path stops


@dataclass
class _Path:
    """A C path's outcome: the chosen ``C``, its out-of-fold accuracy, log-loss and logits
    ``(n, K)`` (None without folds), every C's ``(accuracy, log-loss)`` and the fold
    heads' mean weight norm at that C."""

    C: float
    accuracy: float
    loss: float
    by_C: dict[float, tuple[float, float]]
    oof: np.ndarray | None
    norm: float


class LinearHead(Head):
    """Multinomial logistic regression; ``C`` (inverse L2 strength) chosen by CV: the C
    with the lowest out-of-fold log-loss (at 1-20 images per class many C values tie on
    accuracy; log-loss separates them, and the chosen head's probabilities come out nearly
    calibrated: see benchmarks/README.md, "Figures behind choices in the code").

    ``kind``: ``"linear"``. ``normalize``: ``"power-l2"`` (signed square root, then unit
    rows, see :func:`power_l2`) or ``"standard"`` (zero mean, unit variance per feature).
    Without cross-validation (a class with one image) ``C`` is 1 (0.01 standardised).
    ``blocks``: the widths of tapped intermediate blocks at the end of each feature row
    (see :meth:`headstart.backbone.build.Backbone.with_taps`); the first ``D - sum(blocks)``
    columns are the final features, which the normalisation and the ImageNet block use;
    ``block_weights``: the weights tried for the blocks (:data:`BLOCK_WEIGHTS`).

    Fitted attributes: ``classes_``, ``mean_``/``scale_`` (standardisation of the final
    features; zeros and ones with ``power-l2``), ``coef_`` ``(K, D)``, ``intercept_``
    ``(K,)``, ``C_``, ``cv_score_`` (mean CV accuracy of the chosen ``C``, NaN when a class
    is too small to cross-validate), ``cv_path_`` (``{C: (accuracy, log-loss)}`` out of
    fold), ``block_weight_`` (the tapped blocks' weight, see :func:`tapped_blocks`; 0 when
    unused), ``cv_features_`` (``{features: (accuracy, log-loss)}`` of each candidate).
    """

    kind = "linear"
    help = "logistic regression, its strength chosen by cross-validation (few images)"
    uses_blocks = True
    imagenet_block_: tuple[np.ndarray, np.ndarray] | None = None
    block_weight_: float = 0.0

    def __init__(self, Cs: tuple[float, ...] = WIDE_CS, cv: int = 5,
                 class_weight: str | None = "balanced", max_iter: int = 1000,
                 random_state: int = 0, normalize: str = "power-l2",
                 imagenet: tuple[np.ndarray, np.ndarray] | None = None,
                 blocks: tuple[int, ...] = (),
                 block_weights: tuple[float, ...] = BLOCK_WEIGHTS) -> None:
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.normalize = normalize
        self.imagenet = imagenet
        self.blocks = blocks
        self.block_weights = block_weights

    @classmethod
    def create(cls, random_state: int = 0,
               imagenet: tuple[np.ndarray, np.ndarray] | None = None,
               blocks: tuple[int, ...] = ()) -> "LinearHead":
        return cls(random_state=random_state, imagenet=imagenet, blocks=blocks)

    def refit_params(self) -> dict[str, Any]:
        """The parameters with the fitted choices fixed: ``C`` and the blocks' weight."""
        return {**self.get_params(), "Cs": (self.C_,), "block_weights": (self.block_weight_,)}

    def _final(self, X: np.ndarray) -> np.ndarray:
        """The final features of rows ``X`` (without the tapped blocks)."""
        return X[:, :X.shape[1] - sum(self.blocks)]

    def _normalised(self, X: Any, imagenet: tuple[np.ndarray, np.ndarray] | None = None,
                    weight: float | None = None) -> np.ndarray:
        """Rows ``(N, D)`` as the head sees them: ``(N, D + M)`` with an ImageNet block of
        ``M`` classes (the fitted settings unless ``imagenet`` and ``weight`` are given)."""
        X = np.asarray(X, dtype=np.float32)
        imagenet = self.imagenet_block_ if imagenet is None else imagenet
        weight = self.block_weight_ if weight is None else weight
        F = self._final(X)
        parts = [power_l2(F) if self.normalize == "power-l2" else (F - self.mean_) / self.scale_]
        if imagenet is not None:
            parts.append(imagenet_block(F, *imagenet))
        if self.blocks:
            parts.append(tapped_blocks(X[:, F.shape[1]:], self.blocks, weight))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def fit(self, X: Any, y: Any, folds: Folds | None = None) -> "LinearHead":
        """Normalise, choose ``C`` by cross-validation (``folds`` of the rows
        cross-validated on, or new ones), then fit on every row. With ``imagenet`` (the
        backbone's ImageNet classifier, weight ``(1000, D)`` and bias ``(1000,)``) the same
        path also runs on the features with the :func:`imagenet_block` appended; with
        ``blocks``, with the tapped blocks at each of ``block_weights``; the
        features with the lowest out-of-fold log-loss are kept, the simpler on ties (never
        without cross-validation, nor beyond :data:`FEW_SHOT_MAX_PER_CLASS` images in the
        smallest class: then the final features alone).

        Fitted attributes besides the parameters: ``oof_logits_`` ``(n, K)``, the
        out-of-fold logits of the chosen ``C`` for the rows ``oof_rows_`` (None without
        cross-validation), ``oof_scale_``: how much larger the final head's weights are
        than the fold heads' (a temperature fitted on the out-of-fold logits is multiplied
        by it, about 1.1 at 5-20 images per class), ``imagenet_block_``: the classifier
        appended, or None, and ``block_weight_``.
        """
        X, y = check_xy(X, y)
        d = self._check(X)
        self.classes_ = np.unique(y)
        yi = np.searchsorted(self.classes_, y)
        self.mean_, self.scale_ = standardiser(X[:, :d]) if self.normalize == "standard" \
            else (np.zeros(d, np.float32), np.ones(d, np.float32))
        sub = cv_subset(yi, self.random_state)
        folds = folds if folds is not None else stratified_folds(yi[sub], self.cv,
                                                                  self.random_state)
        with one_thread():
            path, Xs = self._choose_features(X, yi, sub, folds)
            self.C_, self.cv_score_, self.cv_path_ = path.C, path.accuracy, path.by_C
            self.oof_logits_, self.oof_rows_ = path.oof, (sub if path.oof is not None else None)
            Z, V = project(Xs)
            model = self._solve(Z, yi, self.C_, None)
            # the final head, fitted on every row, is more confident than the fold heads
            # whose logits calibrate it: by the ratio of their weights' norms
            self.oof_scale_ = float(np.linalg.norm(model.W) / max(path.norm, 1e-12)) \
                if path.oof is not None else 1.0
        coef = (model.W @ V.T if V is not None else model.W).astype(np.float32)
        intercept = model.b.astype(np.float32)
        if coef.shape[0] == 1:  # binary: p1 = sigmoid(z) = softmax([0, z])[1]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros(1, np.float32), intercept])
        self.coef_, self.intercept_ = coef, intercept
        return self

    def _check(self, X: np.ndarray) -> int:
        """The parameters against rows ``X`` ``(N, D)``; returns the final features' width.

        Raises:
            HeadstartError: naming the parameter that does not fit.
        """
        if self.normalize not in NORMALIZE:
            raise HeadstartError(param="normalize", expected=f"one of {', '.join(NORMALIZE)}",
                                 got=self.normalize)
        d = X.shape[1] - sum(self.blocks)
        if any(int(b) < 1 for b in self.blocks) or d < 1:
            raise HeadstartError(param="blocks", expected=f"widths >= 1 summing to less than "
                                 f"the {X.shape[1]} features", got=self.blocks)
        if self.imagenet is not None and (len(self.imagenet) != 2 or
                                          np.shape(self.imagenet[0])[1:] != (d,)):
            raise HeadstartError(param="imagenet", expected=f"(weight (M, {d}), bias (M,))",
                                 got=[np.shape(a) for a in self.imagenet])
        return d

    def _choose_features(self, X: np.ndarray, yi: np.ndarray, sub: np.ndarray,
                         folds: Folds | None) -> tuple["_Path", np.ndarray]:
        """The C path of each candidate feature set (final features; with the ImageNet
        block; with the tapped blocks at each weight), the one with the lowest out-of-fold
        log-loss kept (the first, simpler, on ties): its path and its rows ``(N, D')``."""
        few = folds is not None and np.bincount(yi).min() <= FEW_SHOT_MAX_PER_CLASS
        blocks: list[tuple[np.ndarray, np.ndarray] | None] = [None]
        if self.imagenet is not None and few:
            blocks.append((np.asarray(self.imagenet[0], np.float32),
                           np.asarray(self.imagenet[1], np.float32)))
        weights = tuple(self.block_weights) if self.blocks and few else (0.0,)
        self.cv_features_: dict[str, tuple[float, float]] = {}
        best = None
        for block in blocks:
            for w in weights:
                Xs = self._normalised(X, block, w).astype(np.float64)
                path = self._path(Xs[sub], yi[sub], folds)
                name = "final" + (" + ImageNet classes" if block is not None else "") + \
                    (f" + blocks at {w:g}" if w else "")
                self.cv_features_[name] = (path.accuracy, path.loss)
                if best is None or path.loss < best[2].loss:
                    best = (block, w, path, Xs)
        assert best is not None
        self.imagenet_block_, self.block_weight_, path, Xs = best
        if len(self.cv_features_) > 1:
            logger.info("linear head: (accuracy, log-loss) out of fold %s", self.cv_features_)
        return path, Xs

    def _path(self, Xc: np.ndarray, yc: np.ndarray, folds: Folds | None) -> "_Path":
        """One warm-started path along ``Cs`` per fold on normalised rows ``Xc``, then the
        C half-way (geometrically) to each neighbour of the best, warm-started from the
        fold heads of the stronger neighbour (the grid's resolution at half the cost)."""
        if folds is None:
            return _Path(0.01 if self.normalize == "standard" else 1.0, float("nan"),
                         float("inf"), {}, None, 1.0)
        coords = fold_coordinates(Xc, folds)  # (training rows, test rows) of each fold
        tried: list[tuple[float, float, float, np.ndarray, float]] = []  # C, acc, loss, oof, norm
        heads: list[list[Logistic]] = []
        # the folds' solves of one C run side by side (NumPy releases the GIL in them)
        with ThreadPoolExecutor(min(len(folds), cores())) as pool:
            def at(C: float, start: Sequence[Logistic | None]) -> list[Logistic]:
                models = list(pool.map(lambda f: self._solve(
                    coords[f][0], yc[folds[f][0]], C, start[f]), range(len(folds))))
                oof = np.zeros((len(yc), len(self.classes_)), np.float32)
                for f, ((_, te), m) in enumerate(zip(folds, models)):
                    oof[te] = logits2(_logits(m, coords[f][1]))
                acc = float(np.mean([np.mean(oof[te].argmax(axis=1) == yc[te])
                                     for _, te in folds]))
                tried.append((C, acc, log_loss(oof, yc), oof,
                              float(np.mean([np.linalg.norm(m.W) for m in models]))))
                return models
            Cs = sorted(self.Cs)
            start: Sequence[Logistic | None] = [None] * len(folds)
            for j, C in enumerate(Cs):  # one warm-started path along C per fold
                heads.append(at(C, start))
                start = heads[-1]
                losses = [t[2] for t in tried]
                if j - int(np.argmin(losses)) >= PATH_PATIENCE:
                    break  # PATH_PATIENCE weaker C values without a lower log-loss
            b = int(np.argmin([t[2] for t in tried]))
            for lo in (b - 1, b):  # the half-way Cs below and above the best
                if 0 <= lo and lo + 1 < len(Cs):
                    at(float(np.sqrt(Cs[lo] * Cs[lo + 1])), heads[lo])
        C, acc, loss, oof, norm = min(tried, key=lambda t: t[2])  # accuracy ties often
        return _Path(float(C), acc, float(loss),
                     {float(c): (float(a), float(l)) for c, a, l, _, _ in sorted(tried)
                      if np.isfinite(l)}, oof, norm)

    def _solve(self, Z: np.ndarray, y: np.ndarray, C: float, init: Logistic | None
               ) -> Logistic:
        k = len(self.classes_)
        weight = balanced_weights(y, k) if self.class_weight == "balanced" else None
        return fit_logistic(Z, y, k, C, weight, init, max_iter=self.max_iter)

    def chosen(self) -> dict[str, Any]:
        """What fitting chose: the normalisation, ``C``, the extra features, and the
        out-of-fold accuracy and log-loss of each C tried (empty without
        cross-validation)."""
        return {"normalize": self.normalize, "C": self.C_ if self.C_ == self.C_ else None,
                "imagenet_classes": self.imagenet_block_ is not None,
                "intermediate_blocks": list(self.blocks) if self.block_weight_ else [],
                "intermediate_weight": self.block_weight_,
                "chosen_by": "out-of-fold log-loss" if self.cv_path_ else "default",
                "cv_by_features": {k: {"accuracy": round(a, 4), "log_loss": round(l, 4)}
                                   for k, (a, l) in self.cv_features_.items()
                                   if len(self.cv_features_) > 1},
                "cv_by_C": {f"{C:g}": {"accuracy": round(a, 4), "log_loss": round(l, 4)}
                            for C, (a, l) in self.cv_path_.items()}}

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(N, K)``."""
        return self._normalised(X) @ self.coef_.T + self.intercept_

    def state(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (see :meth:`from_state`): ``power_l2``
        ``(1,)`` (the row length) for power-l2 heads, ``mean``/``scale`` for standardised
        ones; ``imagenet_weight`` ``(M, F)`` and ``imagenet_bias`` ``(M,)`` when the
        ImageNet block is appended (``coef`` is then ``(K, D + M)``); ``blocks`` (the
        tapped widths) and ``block_weight`` ``(1,)`` with tapped blocks."""
        norm = ({"power_l2": np.asarray([NORM_SCALE], np.float32)}
                if self.normalize == "power-l2" else {"mean": self.mean_, "scale": self.scale_})
        if self.imagenet_block_ is not None:
            norm["imagenet_weight"], norm["imagenet_bias"] = self.imagenet_block_
        if self.blocks:
            norm["blocks"] = np.asarray(self.blocks, np.int64)
            norm["block_weight"] = np.asarray([self.block_weight_], np.float32)
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
        widths = state.get("blocks")
        blocks = tuple(int(w) for w in widths) if widths is not None and widths.ndim == 1 \
            and widths.dtype.kind in "iu" else ()
        f = d - sum(blocks)
        if widths is not None and (not blocks or min(blocks) < 1 or f < 1):
            raise ModelError(f"{FILE}: blocks must be widths >= 1 summing to less than {d}")
        norm: dict[str, tuple[int, ...]] = ({"power_l2": (1,)} if "power_l2" in state
                                            else {"mean": (f,), "scale": (f,)})
        if blocks:
            norm.update({"blocks": (len(blocks),), "block_weight": (1,)})
        m = 0
        if "imagenet_bias" in state or "imagenet_weight" in state:
            bias = state.get("imagenet_bias")
            m = bias.shape[0] if bias is not None and bias.ndim == 1 else -1
            norm.update({"imagenet_weight": (m, f), "imagenet_bias": (m,)})
        expect_shapes(FILE, state, {**norm, "coef": (k, d + m), "intercept": (k,),
                                    "classes": (k,)})
        head = cls(normalize="power-l2" if "power_l2" in state else "standard", blocks=blocks)
        head.coef_, head.intercept_ = state["coef"], state["intercept"]
        head.C_, head.cv_score_, head.cv_path_ = float("nan"), float("nan"), {}  # not stored
        head.cv_features_ = {}
        head.oof_scale_ = 1.0
        if m:
            head.imagenet_block_ = (state["imagenet_weight"], state["imagenet_bias"])
        if blocks:
            head.block_weight_ = float(state["block_weight"][0])
        if "power_l2" in state:
            if not np.isclose(float(state["power_l2"][0]), NORM_SCALE):
                raise ModelError(f"{FILE}: power_l2 must be {NORM_SCALE:.6f}")
            state = {**state, "mean": np.zeros(f, np.float32), "scale": np.ones(f, np.float32)}
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
                self.imagenet = head.imagenet_block_ is not None
                self.blocks, self.weight = list(head.blocks), head.block_weight_
                buffers(self, {"mean": head.mean_, "scale": head.scale_,
                               "coef": head.coef_, "intercept": head.intercept_})
                if head.imagenet_block_ is not None:
                    buffers(self, dict(zip(("in_weight", "in_bias"), head.imagenet_block_)))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                f = x[:, :x.shape[1] - sum(self.blocks)]
                z = torch_power_l2(f) if self.power_l2 else (f - self.mean) / self.scale
                if self.imagenet:
                    z = torch.cat([z, torch_imagenet_block(f, self.in_weight, self.in_bias)], 1)
                if self.blocks:
                    z = torch.cat([z, torch_tapped_blocks(x[:, f.shape[1]:], self.blocks,
                                                          self.weight)], dim=1)
                return z @ self.coef.T + self.intercept

        return Linear(self).eval()


def _logits(model: Logistic, Z: np.ndarray) -> np.ndarray:
    z = Z @ model.W.T + model.b
    return z[:, 0] if z.shape[1] == 1 else z
