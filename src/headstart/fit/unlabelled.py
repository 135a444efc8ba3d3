"""Learning from a pile of unlabelled images beside the labelled ones, on frozen features.

Features ``X`` are ``(N, D)`` rows of the run's feature matrix (the same columns the head
reads), labels ``y`` ``(N,)`` in ``0..K-1``; the pile ``Xu`` is ``(M, D)``.

The default (``agree``, measured in benchmarks/README.md, "Learning from unlabelled
images"): label propagation (Zhou et al. 2004) over a 10-nearest-neighbour graph of the
labelled and the pile images (power-L2 final features centred on the mean of all of them,
edge weights ``max(cos, 0)^3``, ``alpha`` 0.99) gives each pile image class scores; where
its top class is also the head's, the image may join the training under that label. The
most confident of them, in equal numbers per class, join and the head is fitted again,
in ``rounds`` rounds (``fraction``, then twice and three times that share of the pile,
each round's agreement taken with the head refitted in the round before). Other
``method`` values, for the studies: ``propagate`` (the graph alone), ``selftrain`` (the
head alone), ``kmeans`` / ``agreek`` (soft k-means prototypes instead of the graph),
``off``.

:func:`learn_from_pile` is what ``train --unlabelled`` runs: pile images the unknown
detector rejects are left out (the whole pile when too few are left), and the pile is kept
only when it does not lower the cross-validated accuracy on the labelled images (from
:data:`STRICT_FROM_PER_CLASS` labelled images per class, only when it raises it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from ..errors import HeadstartError
from ..heads import make_head
from ..heads.normalise import power_l2

__all__ = ["PileSummary", "UnlabelledConfig", "fit_labelled", "fit_with_pile",
           "learn_from_pile", "propagate"]

logger = logging.getLogger(__name__)

METHODS = ("agree", "propagate", "selftrain", "kmeans", "agreek", "off")


@dataclass
class UnlabelledConfig:
    """How the pile is used: ``method`` (see the module docstring), ``fraction``: the share
    of the pile that may join with a label (spread equally over the classes), ``knn`` and
    ``alpha``: the graph's neighbours and propagation strength."""

    method: str = "agree"
    fraction: float = 0.2
    knn: int = 10
    alpha: float = 0.99
    kind: str = "auto"
    seed: int = 0
    rep: str = "centred"
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HeadstartError(param="method", expected=f"one of {', '.join(METHODS)}",
                                 got=self.method)


def fit_labelled(X: np.ndarray, y: np.ndarray, blocks: tuple[int, ...] = (),
                 imagenet: Any = None, kind: str = "auto", seed: int = 0) -> Any:
    """A ``kind`` head fitted on ``X`` ``(N, D)``, ``y`` ``(N,)`` (the kept head)."""
    return make_head(kind, seed, imagenet, blocks).fit(X, y).result()


def _graph(Z: np.ndarray, knn: int) -> Any:
    """The symmetric, normalised k-nearest-neighbour affinity ``(N, N)`` (sparse) of unit
    rows ``Z`` ``(N, d)``: ``max(cos, 0)^3`` to each row's ``knn`` nearest."""
    from scipy import sparse

    n = len(Z)
    k = min(knn, n - 1)
    rows, cols, vals = [], [], []
    for a in range(0, n, 1024):
        s = Z[a:a + 1024] @ Z.T
        s[np.arange(len(s)), a + np.arange(len(s))] = -np.inf  # no edge to itself
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(a, a + len(s)), k))
        cols.append(idx.ravel())
        vals.append(np.maximum(np.take_along_axis(s, idx, axis=1), 0).ravel() ** 3)
    W = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                 np.concatenate(cols))), shape=(n, n))
    W = W + W.T
    d = np.asarray(W.sum(axis=1)).ravel()
    inv = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    return sparse.diags(inv) @ W @ sparse.diags(inv)


def propagate(Zl: np.ndarray, yl: np.ndarray, Zu: np.ndarray, n_classes: int,
              knn: int = 10, alpha: float = 0.99) -> np.ndarray:
    """Label propagation: each pile row's class scores ``(M, K)`` (rows sum to 1) from
    labelled rows ``Zl`` ``(N, d)`` with labels ``yl`` and pile rows ``Zu`` ``(M, d)``, all
    of unit length."""
    from scipy import sparse
    from scipy.sparse.linalg import cg

    Z = np.vstack([Zl, Zu]).astype(np.float32)
    S = _graph(Z, knn)
    A = sparse.identity(len(Z), format="csr") - alpha * S
    Y = np.zeros((len(Z), n_classes))
    counts = np.bincount(yl, minlength=n_classes).astype(float)
    Y[np.arange(len(yl)), yl] = 1.0 / counts[yl]
    F = np.column_stack([cg(A, Y[:, c], maxiter=50)[0] for c in range(n_classes)])
    F = np.maximum(F[len(Zl):], 0)
    total = F.sum(axis=1, keepdims=True)
    return np.where(total > 0, F / np.maximum(total, 1e-12), 1.0 / n_classes)


def soft_kmeans(Zl: np.ndarray, yl: np.ndarray, Zu: np.ndarray, n_classes: int,
                iters: int = 10, beta: float = 10.0) -> np.ndarray:
    """Transductive prototypes: class means of the labelled rows, refined by soft
    assignments of the pile rows (labelled rows keep their class): ``(M, K)`` scores."""
    P = np.stack([Zl[yl == c].mean(axis=0) for c in range(n_classes)])
    L = np.eye(n_classes)[yl]
    for _ in range(iters):
        logits = beta * (Zu @ P.T - 0.5 * (P * P).sum(axis=1))
        A = np.exp(logits - logits.max(axis=1, keepdims=True))
        A /= A.sum(axis=1, keepdims=True)
        P = (L.T @ Zl + A.T @ Zu) / (L.sum(axis=0) + A.sum(axis=0))[:, None]
    return A


def _represent(Xl: np.ndarray, Xu: np.ndarray, blocks: tuple[int, ...], rep: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows for the graph or the prototypes: power-L2 final features (``final``), with
    each tapped block's too (``all``), optionally centred on the mean of every row
    (``centred``)."""
    final = Xl.shape[1] - sum(blocks)

    def one(X: np.ndarray) -> np.ndarray:
        parts = [power_l2(X[:, :final], 1.0)]
        if "all" in rep and blocks:
            bounds = np.cumsum([final, *blocks])
            parts += [power_l2(X[:, a:b], 1.0) for a, b in zip(bounds, bounds[1:])]
        return np.hstack(parts)
    Zl, Zu = one(Xl), one(Xu)
    if "centred" in rep:
        mean = np.vstack([Zl, Zu]).mean(axis=0)
        Zl, Zu = Zl - mean, Zu - mean
    norm = lambda Z: Z / (np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12)  # noqa: E731
    return norm(Zl), norm(Zu)


def select(scores: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The pile rows to label and their labels: per class, the most confident rows whose
    top class it is, at most ``fraction * M / K`` each (equal numbers keep the classes
    balanced): ``(rows, labels)``."""
    m, k = scores.shape
    top, conf = scores.argmax(axis=1), scores.max(axis=1)
    per = max(1, math.ceil(fraction * m / k))
    picked = []
    for c in range(k):
        rows = np.flatnonzero(top == c)
        picked.append(rows[np.argsort(-conf[rows], kind="stable")[:per]])
    rows = np.concatenate(picked) if picked else np.zeros(0, int)
    return rows, top[rows]


Fit = Callable[[np.ndarray, np.ndarray], Any]


def fit_with_pile(Xl: np.ndarray, yl: np.ndarray, Xu: np.ndarray,
                  blocks: tuple[int, ...] = (), imagenet: Any = None,
                  cfg: UnlabelledConfig | None = None, base: Any = None,
                  fit: Fit | None = None) -> tuple[Any, dict[str, Any]]:
    """A head fitted on labelled rows ``Xl`` ``(N, D)``, ``yl`` and pile rows ``Xu``
    ``(M, D)`` as ``cfg`` says; ``base``: the head fitted on the labelled rows alone, if
    already fitted; ``fit(X, y)``: how a head is fitted (default: a new ``cfg.kind`` head
    with its own cross-validation). Returns the head and what was done (``method``,
    ``used``: pile rows that joined with a label)."""
    cfg = cfg or UnlabelledConfig()
    fit = fit or (lambda X, y: fit_labelled(X, y, blocks, imagenet, cfg.kind, cfg.seed))
    base = base if base is not None else fit(Xl, yl)
    if cfg.method == "off" or not len(Xu):
        return base, {"method": "off", "used": 0}
    k = int(yl.max()) + 1
    Zl, Zu = _represent(Xl, Xu, blocks, cfg.rep)
    graph = None
    if cfg.method in ("propagate", "agree"):
        graph = propagate(Zl, yl, Zu, k, cfg.knn, cfg.alpha)
    if cfg.method in ("kmeans", "agreek"):
        graph = soft_kmeans(Zl, yl, Zu, k)
    head, rows = base, np.zeros(0, int)
    for r in range(cfg.rounds):
        scores = graph if cfg.method in ("propagate", "kmeans") else head.predict_proba(Xu)
        if cfg.method in ("agree", "agreek"):  # both must name the class; mean confidence
            same = scores.argmax(axis=1) == graph.argmax(axis=1)
            scores = np.where(same[:, None], (scores + graph) / 2, 0.0)
        rows, labels = select(scores, cfg.fraction * (r + 1))
        ok = scores[rows, labels] > 0
        rows, labels = rows[ok], labels[ok]
        head = fit(np.vstack([Xl, Xu[rows]]), np.concatenate([yl, labels]))
    return head, {"method": cfg.method, "used": int(len(rows))}


@dataclass
class PileSummary:
    """What ``train --unlabelled`` did with the pile: ``images`` read (``skipped``
    unreadable), ``unlike``: left out by the unknown detector (unlike every labelled
    image), ``used``: pile images that joined the training with a label, ``method``,
    ``kept``: whether the head trained with the pile replaced the one without (``reason``
    in words), and the cross-validated accuracies on the labelled images with and without
    it (None where a class has one image: nothing to hold out)."""

    images: int = 0
    skipped: int = 0
    unlike: int = 0
    used: int = 0
    method: str = ""
    kept: bool = False
    reason: str = ""
    cv_with: float | None = None
    cv_without: float | None = None
    cv_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MIN_LIKE_SHARE = 0.2  # below this share of the pile like the labelled images: ignore it
STRICT_FROM_PER_CLASS = 10  # from this many labelled images per class, the pile must win


def learn_from_pile(Xl: np.ndarray, yl: np.ndarray, Xu: np.ndarray, base: Any,
                    blocks: tuple[int, ...] = (), imagenet: Any = None,
                    cfg: UnlabelledConfig | None = None) -> tuple[Any, PileSummary]:
    """The head to keep, trained with the pile ``Xu`` ``(M, D)`` where that is safe, and
    what was done. Pile images the unknown detector (fitted on the labelled rows ``Xl``
    ``(N, D)``) calls unlike every labelled image are left out, and the whole pile when
    fewer than :data:`MIN_LIKE_SHARE` of it is left. Where every class has 2 or more
    labelled images the pile is kept only if it does not lower the cross-validated accuracy
    on the labelled images (each fold's pile labelled without that fold); the kept head's
    ``oof_logits_`` are then those fold predictions, for calibration."""
    from .calibration import OutOfDistribution

    cfg = cfg or UnlabelledConfig()
    final = Xl.shape[1] - sum(blocks)
    ood = OutOfDistribution().fit(Xl[:, :final])
    like = ood.score(Xu[:, :final]) <= ood.threshold_
    report = PileSummary(images=len(Xu), unlike=int((~like).sum()), method=cfg.method)
    if like.sum() < max(1, MIN_LIKE_SHARE * len(Xu)):
        report.reason = (f"only {int(like.sum())} of the {len(Xu)} unlabelled images look "
                         "like the labelled ones: another domain or other classes, ignored")
        return base, report
    Xu = Xu[like]
    refit = (lambda X, y: type(base)(**base.refit_params()).fit(X, y))
    head, info = fit_with_pile(Xl, yl, Xu, blocks, imagenet, cfg, base)
    report.used = info["used"]
    check = _cross_check(Xl, yl, Xu, blocks, imagenet, cfg, refit)
    if check is None:
        # the head's own cross-validation ran over pile rows too, whose labels came from
        # the very images it would be measured on: not a measure, so none (as without
        # the pile, one image in a class leaves accuracy and calibration unmeasured)
        head.oof_logits_ = head.oof_rows_ = None
        report.kept, report.reason = True, "kept (one labelled image in a class: nothing " \
                                           "to cross-check on)"
        return head, report
    with_pile, without, logits = check
    report.cv_with, report.cv_without, report.cv_images = with_pile, without, len(yl)
    # with many labelled images a tie is no evidence the pile helps: it must win
    tie_ok = int(np.bincount(yl).min()) < STRICT_FROM_PER_CLASS
    if with_pile < without or (with_pile == without and not tie_ok):
        report.reason = (f"not kept: it {'lowered' if with_pile < without else 'did not raise'}"
                         f" the cross-validated accuracy on the labelled images "
                         f"({with_pile:.1%} with it, {without:.1%} without)")
        return base, report
    head.oof_logits_, head.oof_rows_, head.oof_scale_ = logits, np.arange(len(yl)), 1.0
    report.kept = True
    report.reason = (f"kept: cross-validated accuracy on the labelled images "
                     f"{with_pile:.1%} with it, {without:.1%} without")
    return head, report


def _cross_check(Xl: np.ndarray, yl: np.ndarray, Xu: np.ndarray, blocks: tuple[int, ...],
                 imagenet: Any, cfg: UnlabelledConfig, refit: Fit
                 ) -> tuple[float, float, np.ndarray] | None:
    """Out-of-fold accuracy on the labelled rows with and without the pile (each fold's
    pile labelled from the other folds only), and the with-pile logits ``(N, K)``; None
    when a class has a single labelled image."""
    from ..heads.base import stratified_folds

    counts = np.bincount(yl)
    if counts.min() < 2:
        return None
    logits = np.zeros((len(yl), len(counts)))
    right_with = right_without = 0
    for tr, va in stratified_folds(yl, min(5, int(counts.min())), cfg.seed):
        alone = refit(Xl[tr], yl[tr])
        head, _ = fit_with_pile(Xl[tr], yl[tr], Xu, blocks, imagenet, cfg, alone, refit)
        logits[va] = head.decision_function(Xl[va])
        right_with += int(np.sum(logits[va].argmax(axis=1) == yl[va]))
        right_without += int(np.sum(alone.predict(Xl[va]) == yl[va]))
    return right_with / len(yl), right_without / len(yl), logits
