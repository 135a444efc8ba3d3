"""Finding the images whose labels are probably wrong, and moving them (undoably).

:func:`review` reads a labelled dataset once (frozen features, cached like ``train``'s)
and returns a :class:`Review`: one :class:`Suggestion` per image that deserves a look,
strongest evidence first, of three kinds:

* ``label``: probably mislabelled. Every image is predicted by a linear head fitted on the
  other folds (out-of-fold, temperature-calibrated probabilities); following confident
  learning (Northcutt et al., JAIR 2021), an image filed under class i is suggested for
  class j when the head's top class is j and its probability of j reaches the average
  probability that images filed under j get for j (the per-class threshold). Ranked by
  how little probability its own label gets (self-confidence).
* ``duplicate``: the same photo (exact or near copy) filed under two classes.
* ``outlier``: unlike every other image of its class: the mean cosine similarity to its
  nearest class-mates is beyond the 99% robust quantile of its class.

:func:`write_suggestions` writes them as a CSV with an ``action`` column (``move`` to the
suggested class, ``set_aside`` into ``DATA/_set_aside/``, or ``keep``); :func:`apply`
carries the actions out on a class-folder dataset (never deleting, never overwriting) and
writes a log that :func:`undo` reverses.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import resolve_cache_dir, write_text_atomic
from .backbones import load_backbone
from .calibration import fit_temperature, leave_one_out_scores, robust_quantile
from .data import layout
from .defaults import BACKBONE as DEFAULT_BACKBONE
from .errors import DataError
from .features import FeatureCache, ProgressFn
from .heads import LinearHead, softmax, stratified_folds
from .stages import Callbacks, read_data
from .walk import SET_ASIDE, Skipped

__all__ = ["ACTIONS", "Ranked", "Review", "Suggestion", "apply", "apply_rows", "findings",
           "review", "undo", "write_suggestions"]

logger = logging.getLogger(__name__)

ACTIONS = ("move", "set_aside", "keep")
OUTLIER_QUANTILE = 0.99
LOG_PREFIX = ".headstart-review-"


@dataclass
class Suggestion:
    """One image worth a look: filed under ``label``, ``kind`` of evidence (``label``,
    ``duplicate``, ``outlier``), the class the evidence points to (``suggested``, None when
    it points to none) with its out-of-fold ``probability``, the probability of its own
    label, ``score`` (0-1, strength of the evidence, the order within a kind) and a one-line
    ``reason``."""

    path: str
    label: str
    kind: str
    suggested: str | None
    probability: float | None
    label_probability: float | None
    score: float
    reason: str


@dataclass
class Ranked:
    """One image in the label ranking: filed under ``label`` with out-of-fold probability
    ``label_probability``; the head's top class ``top`` with ``top_probability``."""

    path: str
    label: str
    label_probability: float
    top: str
    top_probability: float


@dataclass
class Review:
    """What :func:`review` found in ``data`` (``images`` usable images of ``classes``):
    ``suggestions`` ordered by kind (``label``, ``duplicate``, ``outlier``) then score; the
    accuracy of the out-of-fold predictions they come from; and ``ranking``: every image
    from the least to the most probable under its own label (the suggestions of kind
    ``label`` are the confident part of its top; the rest of the top is worth a look);
    ``skipped``: the files that could not be read, with their reasons."""

    data: str
    classes: list[str]
    images: int
    oof_accuracy: float
    suggestions: list[Suggestion] = field(default_factory=list)
    ranking: list[Ranked] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _oof_probabilities(X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """``(N, K)`` calibrated probabilities, each row from a head fitted without it."""
    head = LinearHead(random_state=seed).fit(X, y)
    if head.oof_logits_ is not None and len(head.oof_rows_) == len(y):
        logits = head.oof_logits_.astype(np.float64)
    else:  # more rows than the head cross-validates: folds at the chosen C
        folds = stratified_folds(y, 5, seed)
        if folds is None:
            raise DataError("review needs at least 2 images in every class")
        logits = np.zeros((len(y), len(head.classes_)))
        for tr, te in folds:
            fold = LinearHead(Cs=(head.C_,), cv=2, random_state=seed).fit(X[tr], y[tr])
            logits[te] = fold.decision_function(X[te])
    return softmax(logits, fit_temperature(logits, y))


def _label_issues(P: np.ndarray, y: np.ndarray, paths: list[str], classes: list[str]
                  ) -> list[Suggestion]:
    k = P.shape[1]
    threshold = np.array([P[y == j, j].mean() if np.any(y == j) else 1.0 for j in range(k)])
    top = P.argmax(axis=1)
    out = []
    for i in np.flatnonzero((top != y) & (P[np.arange(len(y)), top] >= threshold[top])):
        j, own = int(top[i]), float(P[i, y[i]])
        out.append(Suggestion(
            paths[i], classes[y[i]], "label", classes[j], float(P[i, j]), own, 1.0 - own,
            f"looks like {classes[j]} ({P[i, j]:.0%}; images filed under {classes[j]} get "
            f"{threshold[j]:.0%} on average), {classes[y[i]]} only {own:.0%}"))
    return sorted(out, key=lambda s: -s.score)


def _duplicates(groups: list[dict[str, Any]], where: dict[str, int], P: np.ndarray,
                classes: list[str]) -> list[Suggestion]:
    out = []
    for g in groups:
        if not g.get("labels_differ"):
            continue
        members = [m for m in g["members"] if m["path"] in where]
        labels = sorted({m["label"] for m in members})
        for m in members:
            i = where[m["path"]]
            j = int(P[i].argmax())
            out.append(Suggestion(
                m["path"], m["label"], "duplicate", classes[j], float(P[i, j]),
                float(P[i, classes.index(m["label"])]), float(g["similarity"]),
                f"{g['kind']} copy (similarity {g['similarity']:.2f}) filed under "
                f"{' and '.join(labels)}"))
    return out


def _outliers(X: np.ndarray, y: np.ndarray, paths: list[str], classes: list[str],
              P: np.ndarray) -> list[Suggestion]:
    U = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)
    out = []
    for c in range(len(classes)):
        rows = np.flatnonzero(y == c)
        if len(rows) < 5:
            continue
        scores = leave_one_out_scores(U[rows], min(5, len(rows) - 1))
        limit = robust_quantile(scores, OUTLIER_QUANTILE)
        for r in np.flatnonzero(scores > limit):
            i = rows[r]
            out.append(Suggestion(
                paths[i], classes[c], "outlier", None, None, float(P[i, c]),
                float(min(1.0, scores[r] / max(limit, 1e-6) - 1.0)),
                f"unlike the other {classes[c]} images (distance {scores[r]:.2f}, class "
                f"limit {limit:.2f})"))
    return sorted(out, key=lambda s: -s.score)


def review(data: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
           cache_dir: str | os.PathLike | None = None, seed: int = 0,
           progress: ProgressFn | None = None) -> Review:
    """Review the labels of every usable image of ``data`` (all splits; any layout
    ``train`` reads), see the module docstring.

    Raises:
        DataError: not a dataset, or too few images to cross-validate.
    """
    bb = load_backbone(backbone, cache_dir=cache_dir)
    usable = read_data(data, None, None, bb, FeatureCache(resolve_cache_dir(cache_dir)),
                       callbacks=Callbacks(progress))
    X, y = usable.X, usable.y
    assert X is not None
    if np.bincount(y, minlength=len(usable.classes)).min() < 2:
        raise DataError(f"{data}: review needs at least 2 images in every class")
    P = _oof_probabilities(X, y, seed)
    r = findings(str(data), [str(p) for p in usable.paths], y, P, X, usable.classes,
                 usable.health.conflicts + usable.health.leakage)
    r.skipped = list(usable.skipped)
    return r


def findings(data: str, paths: list[str], y: np.ndarray, P: np.ndarray, X: np.ndarray,
             classes: list[str], groups: list[dict[str, Any]]) -> Review:
    """The :class:`Review` of images ``paths`` filed under ``y`` ``(N,)``, from honest
    probabilities ``P`` ``(N, K)`` (out of fold, or of a model that never saw them, as
    ``evaluate`` has for test images), their features ``X`` ``(N, D)`` and the duplicate
    ``groups`` of their data health."""
    where = {p: i for i, p in enumerate(paths)}
    found = (_label_issues(P, y, paths, classes) + _duplicates(groups, where, P, classes))
    seen = {s.path for s in found}
    found += [s for s in _outliers(X, y, paths, classes, P) if s.path not in seen]
    logger.info("review of %s: %d suggestion(s) for %d images", data, len(found), len(y))
    own = P[np.arange(len(y)), y]
    top = P.argmax(axis=1)
    ranking = [Ranked(paths[i], classes[y[i]], float(own[i]), classes[top[i]],
                      float(P[i, top[i]])) for i in np.argsort(own, kind="stable")]
    return Review(data, list(classes), len(y), float(np.mean(top == y)), found, ranking)


def write_suggestions(r: Review, path: str | os.PathLike) -> Path:
    """The suggestions as a CSV (``action,path,label,suggested,probability,kind,reason``):
    ``action`` is ``move`` for probable label errors and ``keep`` for the rest; edit it,
    then :func:`apply` the file."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["action", "path", "label", "suggested", "probability", "kind", "reason"])
        for s in r.suggestions:
            w.writerow(["move" if s.kind == "label" else "keep", s.path, s.label,
                        s.suggested or "", "" if s.probability is None else
                        f"{s.probability:.4f}", s.kind, s.reason])
    return out


def _planned(rows: list[dict[str, str]], root: Path) -> list[tuple[Path, Path]]:
    """``(from, to)`` of every row to carry out, all checked before anything moves."""
    moves, problems, targets = [], [], set()
    for n, row in enumerate(rows, start=2):
        action = (row.get("action") or "keep").strip().lower()
        if action not in ACTIONS:
            problems.append(f"line {n}: action: expected one of {', '.join(ACTIONS)}, "
                            f"got {action!r}")
            continue
        if action == "keep":
            continue
        src = Path(row.get("path") or "").resolve()
        try:
            rel = src.relative_to(root)
        except ValueError:
            problems.append(f"line {n}: {src} is not inside {root}")
            continue
        if action == "move":
            dest_dir = src.parent.parent / (row.get("suggested") or "").strip()
            if not (row.get("suggested") or "").strip() or not dest_dir.is_dir():
                problems.append(f"line {n}: suggested: no class folder "
                                f"{row.get('suggested')!r} beside {src.parent}")
                continue
            dest = dest_dir / src.name
        else:
            dest = root / SET_ASIDE / rel
        if not src.is_file():
            problems.append(f"line {n}: {src}: no such file")
        elif dest.exists() or dest in targets:
            problems.append(f"line {n}: {dest} already exists (nothing is overwritten)")
        else:
            targets.add(dest)
            moves.append((src, dest))
    if problems:
        raise DataError(f"nothing was moved: {len(problems)} row(s) cannot be carried out: "
                        + "; ".join(problems))
    return moves


def _write_log(log: Path, record: dict[str, Any]) -> None:
    write_text_atomic(log, json.dumps(record, indent=1) + "\n")


def apply(suggestions: str | os.PathLike, data: str | os.PathLike) -> tuple[Path, int]:
    """Carry out the ``action`` column of a suggestions CSV on the class folders of
    ``data``: ``(log, moved)``. Every row is checked first (file exists, inside ``data``,
    destination free); nothing moves if any row fails. The log (``data``/
    ``.headstart-review-<time>.json``, ignored as data) is rewritten after each move, so an
    interruption leaves an exact record.

    Raises:
        DataError: ``data`` is not class folders, or a row cannot be carried out.
    """
    with open(suggestions, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return apply_rows(rows, data)


def apply_rows(rows: list[dict[str, str]], data: str | os.PathLike) -> tuple[Path, int]:
    """:func:`apply` for rows already read (``action``, ``path``, ``suggested`` keys)."""
    root = Path(data).resolve()
    if layout(root).kind == "csv":
        raise DataError(f"{data}: --apply moves files between class folders; a CSV dataset "
                        "is relabelled by editing the CSV")
    moves = _planned(rows, root)
    log = root / f"{LOG_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}.json"
    record: dict[str, Any] = {"data": str(root), "moves": [], "created": []}
    for src, dest in moves:
        for folder in reversed(dest.parents):
            if not folder.exists() and root in folder.parents:
                folder.mkdir()
                record["created"].append(str(folder.relative_to(root)))
        os.replace(src, dest)
        record["moves"].append({"from": str(src.relative_to(root)),
                                "to": str(dest.relative_to(root))})
        _write_log(log, record)
    if not moves:
        return log, 0
    logger.info("moved %d file(s); undo with 'headstart review %s --undo %s'", len(moves),
                data, log)
    return log, len(moves)


def undo(log: str | os.PathLike) -> int:
    """Reverse the moves recorded in ``log`` (newest first), remove the folders the moves
    created if they are empty again, and delete the log: the folder is as before. Returns
    the number of files moved back.

    Raises:
        DataError: not a review log, or a file cannot be put back (the log then keeps the
            moves not undone).
    """
    path = Path(log)
    try:
        record = json.loads(path.read_text())
        root, moves, created = Path(record["data"]), record["moves"], record["created"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{log}: not a headstart review log ({e})") from None
    done = 0
    while moves:
        m = moves[-1]
        src, dest = root / m["to"], root / m["from"]
        if dest.exists() or not src.is_file():
            _write_log(path, record)
            raise DataError(f"cannot put {src} back to {dest}: "
                            f"{'the place is taken' if dest.exists() else 'the file is gone'}"
                            f"; {len(moves)} move(s) left in {log}")
        os.replace(src, dest)
        moves.pop()
        done += 1
    for folder in reversed(created):
        try:
            (root / folder).rmdir()
        except OSError:
            pass  # not empty: the user put something there
    path.unlink()
    return done
