"""Which unlabelled images to label next (``headstart suggest``), and which look like none of
the classes.

The model predicts every image of a folder (searched recursively, folder names never read
as labels). Images the unknown detector rejects are listed apart: candidates for a new
class or for removal. Among the others, near duplicates (cosine similarity of the power-L2
final features >= :data:`NEAR_DUPLICATE`) are collapsed to one, then :func:`pick` chooses
``n`` images that are both representative and uncertain: the images are grouped into
clusters (k-means on the features, the model's labelled images included), and from each
of the largest clusters without a labelled image the image most typical of it is taken
(listed most uncertain first). Labelling images spread over the pile where the model has
no example teaches a few-shot model more than labelling at random or its most uncertain
images (at few shots mostly outliers); see benchmarks/README.md for the measured
difference.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import defaults
from ..heads.normalise import power_l2

__all__ = ["NEAR_DUPLICATE", "Suggested", "Suggestions", "pick", "suggest", "write_csv"]

logger = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.97


@dataclass
class Suggested:
    """One image: its ``path``, the model's ``guess`` and its ``probability``, the
    ``runner_up`` class, how many near ``duplicates`` it stands for, its ``unknown_score``
    and ``why`` in words."""

    path: str
    guess: str
    probability: float
    runner_up: str
    duplicates: int
    unknown_score: float
    why: str


@dataclass
class Suggestions:
    """``label_next`` (in the order to label them), ``unlike`` (images like none of the
    classes, most unlike first), ``images`` predicted, ``skipped`` files with reasons."""

    label_next: list[Suggested]
    unlike: list[Suggested]
    images: int
    skipped: list[Any] = field(default_factory=list)
    predictions: Any = None  # the model's predictions of every image (not in to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "label_next": [asdict(s) for s in self.label_next],
                "unlike": [asdict(s) for s in self.unlike],
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}


def _unit(X: np.ndarray) -> np.ndarray:
    return power_l2(np.asarray(X, np.float32), 1.0).astype(np.float32)


def collapse(Z: np.ndarray, order: np.ndarray, threshold: float = NEAR_DUPLICATE
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``order`` of unit features ``Z`` ``(N, d)`` with near duplicates removed (the
    first of each group kept) and, per kept row, how many it stands for. Pairs are found on
    a seeded random projection to 256 dimensions (at cosines near 1 it errs by about
    0.005), then confirmed on the whole features; blocks of 2048 rows keep memory flat."""
    order = np.asarray(order, int)
    Zo = np.asarray(Z[order], np.float32)
    proj = np.random.default_rng(0).normal(size=(Zo.shape[1], min(256, Zo.shape[1])))
    P = (Zo @ proj.astype(np.float32))
    P /= np.linalg.norm(P, axis=1, keepdims=True) + 1e-12
    rep = np.arange(len(order))
    for a in range(0, len(order), 2048):
        S = P[a:a + 2048] @ P[:a + 2048].T
        for r in range(len(S)):
            i = a + r
            hits = np.flatnonzero(S[r, :i] >= threshold - 0.03)
            if len(hits):
                sure = hits[Zo[hits] @ Zo[i] >= threshold]
                if len(sure):
                    rep[i] = rep[sure[0]]
    keep = np.flatnonzero(rep == np.arange(len(order)))
    counts = np.bincount(rep, minlength=len(order))[keep]
    return order[keep], counts


def kmeans(X: np.ndarray, k: int, seed: int = 0, iters: int = 25, sample: int = 3000,
           restarts: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """k-means of rows ``X`` ``(N, d)``: ``(centres (k, d), labels (N,))``. Greedy k-means++
    seeding and Lloyd iterations on a seeded sample of at most ``sample`` rows (enough for
    ``k`` in the tens), the best of ``restarts`` by inertia, then every row assigned to its
    nearest centre."""
    rng = np.random.default_rng(seed)
    S = X if len(X) <= sample else X[np.sort(rng.choice(len(X), sample, replace=False))]
    sq = np.einsum("ij,ij->i", S, S)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(restarts):
        C = _seed_centres(S, sq, k, rng)
        for _ in range(iters):
            d = (C * C).sum(axis=1) - 2 * S @ C.T
            near = np.argmin(d, axis=1)
            moved = np.stack([S[near == j].mean(axis=0) if np.any(near == j) else C[j]
                              for j in range(k)])
            if np.allclose(moved, C, atol=1e-6):
                break
            C = moved
        inertia = float(np.sum(sq + ((C * C).sum(axis=1) - 2 * S @ C.T).min(axis=1)))
        if best is None or inertia < best[0]:
            best = (inertia, C)
    assert best is not None
    C = best[1]
    labels = np.concatenate([np.argmin((C * C).sum(axis=1) - 2 * X[a:a + 4096] @ C.T, axis=1)
                             for a in range(0, len(X), 4096)])
    return C, labels


def _seed_centres(S: np.ndarray, sq: np.ndarray, k: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """Greedy k-means++: each new centre the best of a few candidates drawn in proportion
    to the squared distance to the nearest centre so far."""
    tries = 2 + int(np.log(max(k, 1)))
    first = S[rng.integers(len(S))]
    centres, dist = [first], np.maximum(sq - 2 * S @ first + first @ first, 0)
    for _ in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else np.full(len(S), 1 / len(S))
        cand = S[rng.choice(len(S), size=tries, p=p)]
        d = np.minimum(dist[None, :], np.maximum(sq[None, :] - 2 * cand @ S.T +
                                                 (cand * cand).sum(axis=1)[:, None], 0))
        j = int(np.argmin(d.sum(axis=1)))
        centres.append(cand[j])
        dist = d[j]
    return np.stack(centres)


def pick(Z: np.ndarray, proba: np.ndarray, n: int, seed: int = 0,
         sizes: dict[int, tuple[int, bool]] | None = None,
         labelled: np.ndarray | None = None, weight: float = 0.0) -> np.ndarray:
    """``n`` rows of unit features ``Z`` ``(N, d)`` worth labelling, given the model's
    probabilities ``proba`` ``(N, K)``. The rows (with the ``labelled`` images' unit
    features ``(L, d)``, when given) are grouped by k-means into ``n + L`` clusters; the
    largest clusters without a labelled image come first, and from each the row that best
    combines typicality (cosine to its cluster's centre) and, at ``weight``, uncertainty
    (1 - the margin between the top two probabilities) is taken; ordered most uncertain
    first. ``sizes``, when given, receives each chosen row's cluster size and whether a
    labelled image is in its cluster. The defaults (``weight`` 0: typicality alone, and
    clusters without a labelled image first) measured best against random picks; see
    benchmarks/README.md, "Learning from unlabelled images"."""
    n = min(n, len(Z))
    if n <= 0:
        return np.zeros(0, int)
    top2 = -np.sort(-proba, axis=1)[:, :2]
    unsure = 1.0 - (top2[:, 0] - (top2[:, 1] if proba.shape[1] > 1 else 0.0))
    L = labelled if labelled is not None else Z[:0]
    if len(L) > 4 * n:  # enough to mark the clusters the model has examples in
        L = L[np.sort(np.random.default_rng(seed).choice(len(L), 4 * n, replace=False))]
    both = np.vstack([Z, L]).astype(np.float32)
    # clustered on a seeded projection to 256 dimensions (the groups hardly change, the
    # time falls 5-fold); centres and typicality on the whole features
    proj = np.random.default_rng(seed).normal(size=(both.shape[1], min(256, both.shape[1])))
    _, labels = kmeans(both @ proj.astype(np.float32), min(n + len(L), len(both)), seed)
    mine, theirs = labels[:len(Z)], set(labels[len(Z):].tolist())
    centres = np.stack([both[labels == c].mean(axis=0) if np.any(labels == c) else
                        np.zeros(both.shape[1], np.float32) for c in range(labels.max() + 1)])
    centres = centres / (np.linalg.norm(centres, axis=1, keepdims=True) + 1e-12)
    typical = np.sum(Z * centres[mine], axis=1)
    size = np.bincount(mine, minlength=len(centres))
    order = sorted(range(len(centres)), key=lambda c: (c in theirs, -size[c]))
    chosen = []
    for c in order:
        rows = np.flatnonzero(mine == c)
        if len(rows) and len(chosen) < n:
            chosen.append(rows[np.argmax(typical[rows] + weight * unsure[rows])])
            if sizes is not None:
                sizes[int(chosen[-1])] = (len(rows), c in theirs)
    chosen = np.array(chosen, int)
    return chosen[np.argsort(-unsure[chosen], kind="stable")]


def suggest(clf: Any, images: str | os.PathLike | Sequence[Any], n: int = 20,
            progress: Any = None) -> Suggestions:
    """The ``n`` images of ``images`` (a folder, searched recursively, or paths) to label
    next with the fitted classifier ``clf``, and up to ``n`` that look like none of its
    classes.

    Raises:
        DataError: ``images`` does not exist or holds no image.
    """
    from ..errors import DataError
    from ..io.walk import find_images

    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    files, skipped = find_images(items)
    if not files:
        raise DataError(f"{images}: no images to suggest from")
    pred = clf.predict_images(files, progress=progress)
    Z = _unit(clf.backbone_.final(pred.features))
    rejected = pred.rejected if pred.rejected is not None else np.zeros(len(Z), bool)
    words = _Words(pred, clf.classes_)
    unlike_rows = np.flatnonzero(rejected)
    unlike_rows = unlike_rows[np.argsort(-pred.ood_score[unlike_rows], kind="stable")]
    kept, dup = collapse(Z, np.flatnonzero(~rejected))
    counts = dict(zip(kept.tolist(), dup.tolist()))
    sizes: dict[int, tuple[int, bool]] = {}
    ref = clf.ood_.reference_ if clf.ood_ is not None else None
    labelled = _unit(clf.backbone_.final(ref)) if ref is not None and \
        ref.shape[1] == pred.features.shape[1] else None
    at = pick(Z[kept], pred.proba[kept], n, sizes=sizes, labelled=labelled) \
        if len(kept) else kept
    chosen = kept[at]
    return Suggestions([words(i, counts.get(int(i), 1), *sizes.get(int(j), (1, True)))
                        for i, j in zip(chosen, at)],
                       [words(i, 1) for i in unlike_rows[:n]], len(pred.sources),
                       list(skipped) + list(pred.skipped), pred)


class _Words:
    """A :class:`Suggested` for row ``i`` of predictions, with the reason in words."""

    def __init__(self, pred: Any, classes: list[str]) -> None:
        self.pred, self.classes = pred, classes

    def __call__(self, i: int, duplicates: int, group: int = 1, covered: bool = True
                 ) -> Suggested:
        p = self.pred.proba[i]
        order = np.argsort(-p)
        first, second = self.classes[order[0]], self.classes[order[min(1, len(order) - 1)]]
        unknown = bool(self.pred.rejected[i]) if self.pred.rejected is not None else False
        if unknown:
            why = "unlike every training image: a new class, or one to leave out"
        elif p[order[0]] < defaults.NOT_SURE_BELOW:
            why = f"the model cannot tell {first} from {second}"
        else:
            why = (f"the most typical of a group of {group} similar unlabelled images" +
                   ("" if covered else " with no labelled image among them"))
        if duplicates > 1:
            why += f" (stands for {duplicates} near-identical images)"
        return Suggested(self.pred.sources[i], first, float(p[order[0]]), second, duplicates,
                         float(self.pred.ood_score[i]) if self.pred.ood_score is not None
                         else 0.0, why)


def write_csv(s: Suggestions, path: str | os.PathLike) -> None:
    """The suggestions as CSV (``rank``, ``kind``: ``label_next`` or ``unlike``, ``path``,
    ``guess``, ``probability``, ``runner_up``, ``duplicates``, ``unknown_score``, ``why``),
    written atomically."""
    import csv
    import io
    from pathlib import Path

    from ..io.files import check_output, write_text_atomic

    target = check_output(path, "csv")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "kind", "path", "guess", "probability", "runner_up", "duplicates",
                "unknown_score", "why"])
    for kind, rows in (("label_next", s.label_next), ("unlike", s.unlike)):
        for i, x in enumerate(rows, 1):
            w.writerow([i, kind, x.path, x.guess, f"{x.probability:.4f}", x.runner_up,
                        x.duplicates, f"{x.unknown_score:.4f}", x.why])
    write_text_atomic(Path(target), buf.getvalue())
