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
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import (FileProblem, check_output, inside, load_json, move_new, name_problem,
                  read_regular, write_text_atomic)
from ..backbone.build import load_backbone
from ..fit.calibration import fit_temperature, leave_one_out_scores, robust_quantile
from ..io.dataset import layout
from ..defaults import BACKBONE as DEFAULT_BACKBONE
from ..errors import DataError, PathError
from ..backbone.features import ProgressFn
from ..heads import LinearHead, softmax, stratified_folds
from ..fit.callbacks import CallbackList, Callbacks
from ..fit.settings import FitSettings
from ..fit.stages import read_data
from ..io.walk import SET_ASIDE, Skipped, is_hidden

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
    label, ``score`` (0-1, strength of the evidence, the order within a kind), a one-line
    ``reason`` and the ``action`` it proposes (``move`` to ``suggested``, ``set_aside``,
    ``keep``)."""

    path: str
    label: str
    kind: str
    suggested: str | None
    probability: float | None
    label_probability: float | None
    score: float
    reason: str
    action: str = "keep"


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
            f"{threshold[j]:.0%} on average), {classes[y[i]]} only {own:.0%}", "move"))
    return sorted(out, key=lambda s: -s.score)


def _duplicates(groups: list[dict[str, Any]], where: dict[str, int], P: np.ndarray,
                classes: list[str]) -> list[Suggestion]:
    """One suggestion per copy filed under the wrong class of a group of copies filed under
    different classes: the class the copies' mean probability points to keeps its copy; a
    copy elsewhere is set aside when that class holds one already (moving it there would
    only make a second copy), else the first one moves there."""
    out = []
    for g in groups:
        if not g.get("labels_differ"):
            continue
        members = [m for m in g["members"] if m["path"] in where]
        if len({m["label"] for m in members}) < 2:
            continue
        rows = [where[m["path"]] for m in members]
        j = int(P[rows].mean(axis=0).argmax())
        kept = [m for m in members if m["label"] == classes[j]]
        for m in members:
            if m["label"] == classes[j]:
                continue
            i = where[m["path"]]
            move = not kept
            kept = kept or [m]
            other = next(o for o in members if o is not m)
            what = (f"{g['kind']} copy (similarity {g['similarity']:.2f}) of "
                    f"{Path(other['path']).parent.name}/{Path(other['path']).name}")
            out.append(Suggestion(
                m["path"], m["label"], "duplicate", classes[j], float(P[i, j]),
                float(P[i, classes.index(m["label"])]), float(g["similarity"]),
                f"{what}; the copies look like {classes[j]} ({P[rows, j].mean():.0%}): "
                + (f"move it to {classes[j]}" if move else
                   f"set it aside, the copy in {classes[j]} stays"),
                "move" if move else "set_aside"))
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
    usable = read_data(data, None, None, bb,
                       FitSettings(head=None, cache_dir=cache_dir,
                                   callbacks=CallbackList(Callbacks(progress))))
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
    copies = _duplicates(groups, where, P, classes)
    in_groups = {m["path"] for g in groups if g.get("labels_differ") for m in g["members"]}
    # a copy filed under two classes is one suggestion for the pair, never also a label one
    found = [s for s in _label_issues(P, y, paths, classes) if s.path not in in_groups]
    found += copies
    seen = {s.path for s in found} | in_groups
    found += [s for s in _outliers(X, y, paths, classes, P) if s.path not in seen]
    logger.info("review of %s: %d suggestion(s) for %d images", data, len(found), len(y))
    own = P[np.arange(len(y)), y]
    top = P.argmax(axis=1)
    ranking = [Ranked(paths[i], classes[y[i]], float(own[i]), classes[top[i]],
                      float(P[i, top[i]])) for i in np.argsort(own, kind="stable")]
    return Review(data, list(classes), len(y), float(np.mean(top == y)), found, ranking)


def write_suggestions(r: Review, path: str | os.PathLike) -> Path:
    """The suggestions as a CSV (``action,path,label,suggested,probability,kind,reason``):
    ``action`` is what each suggestion proposes (``move`` for probable label errors,
    ``set_aside`` for a copy whose twin is in the right class, ``keep`` for outliers);
    edit it, then :func:`apply` the file."""
    out = check_output(path, "csv")
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["action", "path", "label", "suggested", "probability", "kind", "reason"])
        for s in r.suggestions:
            w.writerow([s.action, s.path, s.label,
                        s.suggested or "", "" if s.probability is None else
                        f"{s.probability:.4f}", s.kind, s.reason])
    return out


def _move_of(row: dict[str, str], action: str, root: Path, parents: list[Path]
             ) -> tuple[Path, Path]:
    """``(from, to)`` of one row, every path checked to stay inside ``root`` (see
    :func:`headstart.io.files.inside`): the image a regular file in a class folder, the
    destination a free place in a real class folder of the same split (``move``) or under
    ``_set_aside`` (``set_aside``).

    Raises:
        PathError: the row names something outside ``root`` or not a class folder.
    """
    given = (row.get("path") or "").strip()
    if not given:
        raise PathError("the image's path is empty")
    src = inside(root, Path(given).absolute(), "image", "file")
    parent = next((p for p in parents if src.parent != p and p in src.parents), None)
    if parent is None:
        raise PathError(f"image: {given} is not in a class folder of {root}")
    cls = src.relative_to(parent).parts[0]
    if action == "set_aside":
        return src, inside(root, root / SET_ASIDE / src.relative_to(root), "set-aside place",
                           "absent")
    name = (row.get("suggested") or "").strip()
    if (not name or name_problem(name) or is_hidden(Path(name)) or name == cls
            or not (parent / name).is_dir()):
        classes = sorted(d.name for d in parent.iterdir()
                         if d.is_dir() and not is_hidden(d) and d.name != cls)
        raise PathError(f"suggested: expected a class folder beside {cls} in {parent} "
                        f"({', '.join(classes) or 'there is none'}), got {name!r}")
    folder = inside(root, parent / name, "suggested", "folder")
    return src, inside(root, folder / src.name, "destination", "absent")


def _planned(rows: list[dict[str, str]], root: Path) -> list[tuple[Path, Path]]:
    """``(from, to)`` of every row to carry out, all checked before anything moves."""
    parents = [p.resolve() for p in layout(root).class_parents]
    moves, problems, targets = [], [], set()
    for n, row in enumerate(rows, start=2):
        action = (row.get("action") or "keep").strip().lower()
        if action not in ACTIONS:
            problems.append(f"line {n}: action: expected one of {', '.join(ACTIONS)}, "
                            f"got {action!r}")
            continue
        if action == "keep":
            continue
        try:
            src, dest = _move_of(row, action, root, parents)
        except PathError as e:
            problems.append(f"line {n}: {e}")
            continue
        if dest in targets or src in {m[0] for m in moves}:
            problems.append(f"line {n}: {src.relative_to(root)} is moved by another row, "
                            f"or {dest.relative_to(root)} is its destination too")
        else:
            targets.add(dest)
            moves.append((src, dest))
    if problems:
        raise DataError(f"nothing was moved: {len(problems)} row(s) cannot be carried out: "
                        + "; ".join(problems))
    return moves


def _write_log(log: Path, record: dict[str, Any]) -> None:
    write_text_atomic(log, json.dumps(record, indent=1) + "\n")


def _new_log(root: Path) -> Path:
    """A log name of this second not yet taken in ``root`` (two applies never share one)."""
    stem = f"{LOG_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    log, n = root / f"{stem}.json", 0
    while os.path.lexists(log):
        n += 1
        log = root / f"{stem}-{n}.json"
    return log


def apply(suggestions: str | os.PathLike, data: str | os.PathLike) -> tuple[Path, int]:
    """Carry out the ``action`` column of a suggestions CSV on the class folders of
    ``data``: ``(log, moved)``. Every row is checked first (the image a file inside
    ``data``, in a class folder; the destination a free place in a real class folder of the
    same split, or under ``_set_aside``; nothing leaves ``data``); nothing moves if any row
    fails. The log (``data``/``.headstart-review-<time>.json``, ignored as data) records
    each move before it happens, so an interruption leaves an exact record.

    Raises:
        DataError: ``data`` is not class folders, or a row cannot be carried out.
    """
    try:
        text = read_regular(suggestions, 256 << 20).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (FileProblem, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the suggestions CSV {suggestions}: {e}") from None
    return apply_rows(rows, data)


def apply_rows(rows: list[dict[str, str]], data: str | os.PathLike) -> tuple[Path, int]:
    """:func:`apply` for rows already read (``action``, ``path``, ``suggested`` keys)."""
    root = Path(data).resolve()
    if layout(root).kind == "csv":
        raise DataError(f"{data}: --apply moves files between class folders; a CSV dataset "
                        "is relabelled by editing the CSV")
    moves = _planned(rows, root)
    log = _new_log(root)
    if not moves:
        return log, 0
    record: dict[str, Any] = {"data": str(root), "moves": [], "created": []}
    for src, dest in moves:
        for folder in reversed(dest.parents):
            if not folder.exists() and root in folder.parents:
                folder.mkdir()
                record["created"].append(str(folder.relative_to(root)))
        record["moves"].append({"from": str(src.relative_to(root)),
                                "to": str(dest.relative_to(root))})
        _write_log(log, record)  # before the move: a kill between leaves it recorded
        move_new(src, dest)
    logger.info("moved %d file(s); undo with 'headstart review %s --undo %s'", len(moves),
                data, log)
    return log, len(moves)


def _log_record(log: str | os.PathLike, root: Path) -> dict[str, Any]:
    """The review log ``log``, checked to be one written for ``root``."""
    try:
        record = load_json(read_regular(log, 64 << 20))
    except (FileProblem, ValueError) as e:
        raise DataError(f"{log}: not a headstart review log ({e})") from None
    entry = {"from": str, "to": str}
    if not (isinstance(record, dict) and isinstance(record.get("data"), str)
            and isinstance(record.get("moves"), list)
            and isinstance(record.get("created", []), list)
            and all(isinstance(m, dict) and all(isinstance(m.get(k), t)
                                                for k, t in entry.items())
                    for m in record["moves"])
            and all(isinstance(c, str) for c in record.get("created", []))):
        raise DataError(f"{log}: not a headstart review log (expected data, moves of "
                        "from/to and created)")
    if "\0" in record["data"] or Path(record["data"]).resolve() != root:
        raise DataError(f"{log} was written for {record['data']!r}, not {root}: give the "
                        "folder it was written for")
    return record


def _undo_plan(record: dict[str, Any], root: Path, log: str | os.PathLike
               ) -> list[tuple[Path, Path] | None]:
    """``(now, back)`` for each move of the log, newest first, every path checked to stay
    inside ``root``; None for a move a kill stopped before it happened."""
    plan: list[tuple[Path, Path] | None] = []
    backs = set()
    for m in reversed(record["moves"]):
        try:
            if Path(m["to"]).is_absolute() or Path(m["from"]).is_absolute():
                raise PathError(f"{m['from']!r} -> {m['to']!r}: absolute paths")
            if not os.path.lexists(root / m["to"]) and os.path.lexists(root / m["from"]):
                inside(root, m["from"], "from", "file")
                plan.append(None)  # recorded, then killed before the move: still in place
                continue
            now = inside(root, m["to"], "to", "file")
            back = inside(root, m["from"], "from", "absent")
        except PathError as e:
            raise DataError(f"{log}: cannot undo: {e}; nothing was moved") from None
        if back in backs or not back.parent.is_dir():
            raise DataError(f"{log}: cannot undo: {back} is "
                            f"{'named twice' if back in backs else 'in a folder that is gone'}"
                            "; nothing was moved")
        backs.add(back)
        plan.append((now, back))
    return plan


def undo(log: str | os.PathLike, data: str | os.PathLike) -> int:
    """Reverse the moves recorded in ``log`` inside ``data`` (the folder the log was written
    for), newest first; remove the folders the moves created if they are empty again, and
    delete the log: the folder is as before. Every entry is checked before anything moves
    (each path inside ``data``, each file where the log says, each place free). Returns
    the number of files moved back.

    Raises:
        DataError: not a review log, one written for another folder, or an entry that
            cannot be undone (nothing is moved then).
    """
    root = Path(data).resolve()
    if not root.is_dir():
        raise DataError(f"{data}: not a folder; give the folder the log was written for")
    record = _log_record(log, root)
    plan = _undo_plan(record, root, log)
    done = 0
    for step in plan:
        if step is not None:
            move_new(*step)
            done += 1
        record["moves"].pop()
        _write_log(Path(log), record)
    for folder in reversed(record.get("created", [])):
        try:
            inside(root, folder, "created", "folder").rmdir()
        except (PathError, OSError):
            pass  # not empty (the user put something there), gone, or not ours
    Path(log).unlink()
    return done
