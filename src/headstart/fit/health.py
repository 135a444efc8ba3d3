"""Data health: what is wrong with a dataset, found before training on it.

:func:`check` inspects every split of a dataset and returns a :class:`Health`:

* **unusable files**, each with its reason (empty, truncated, text or HTML saved as an image,
  unsupported format, too many pixels, broken link, unreadable), the rest still usable;
* **duplicates**: exact (same bytes: content hash) and near (pooled backbone features with
  cosine similarity above a threshold, confirmed by a 16x16 grey thumbnail, mirrored or
  not), grouped, then sorted into *leakage* (a group spans train/val/test: held-out
  accuracy is inflated), *conflicting labels* (one photo under two classes) and plain
  duplicates within a class;
* **balance**: images per class and split, the imbalance ratio, classes under 5 images;
* **folders**: empty class folders, nested folders, class names that differ only by case,
  spaces or underscores, classes missing from a split;
* **notes** that are not problems: multi-frame images (the first frame is used), tiny
  images (< 32 px on a side, upscaled), hidden files (ignored).

The near-duplicate threshold adapts to the data: ``max(0.90, median nearest-neighbour
cosine + 0.15)``, because pooled features of images far from ImageNet photos (MNIST digits)
are all alike (median 0.93) while two different photos rarely exceed 0.85. :meth:`Health.
problems` counts what needs attention; ``headstart check`` exits with 3 when it is not 0.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..io.dataset import (SPLIT_ORDER, SPLITS, Dataset, ImageSet, Skipped, layout, links_back,
                   load_splits)
from ..errors import DataError, HeadstartError
from ..io.walk import is_hidden
from ..backbone.features import FileFacts, ProgressFn

__all__ = ["Entry", "Health", "TrainedOn", "assess", "check", "dataset_health",
           "entries_of", "folder_problems"]

logger = logging.getLogger(__name__)

NEAR_FLOOR = 0.90
NEAR_MARGIN = 0.15
THUMB_MATCH = 0.90
TINY = 32
FEW = 5


@dataclass(frozen=True)
class Entry:
    """One labelled image of the dataset: its path, split and class name."""

    path: str
    split: str
    label: str


def entries_of(split: str, images: ImageSet) -> list[Entry]:
    """The :class:`Entry` of each image of ``images`` (a split of a dataset)."""
    return [Entry(str(p), split, images.classes[y]) for p, y in zip(images.paths, images.labels)]


def _same_picture(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return False
    return max(float((a * b).sum()), float((a * b[:, ::-1]).sum())) >= THUMB_MATCH


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().casefold())


def folder_problems(source: str | os.PathLike) -> list[dict[str, str]]:
    """Nested class folders and class names that differ only by case, spaces or ``_``."""
    try:
        lay = layout(source)
    except DataError:
        return []
    if lay.kind == "csv":
        return []
    out = []
    for parent in sorted(lay.class_parents):
        classes = sorted(d for d in parent.iterdir() if d.is_dir()
                         and not is_hidden(d) and not links_back(d))
        groups: dict[str, list[str]] = defaultdict(list)
        for d in classes:
            groups[_norm_name(d.name)].append(d.name)
            nested = sorted(s.name for s in d.iterdir()
                            if s.is_dir() and not s.name.startswith(".") and not links_back(s))
            if nested:
                out.append({"path": str(d), "problem": f"nested folders {nested[:5]}: their "
                            f"images are counted as class {d.name!r}"})
        for names in groups.values():
            if len(names) > 1:
                out.append({"path": str(parent), "problem": f"class folders {names} differ "
                            "only by case, spaces or underscores: one class or two?"})
    return out


@dataclass
class Health:
    """The findings of :func:`check`; :meth:`to_dict` is the ``--json`` output.

    ``totals``: the full length of lists that :meth:`to_dict` capped (kept when read back
    with :meth:`from_dict`, so that the counts stay right).
    """

    data: str
    layout: str
    counts: dict[str, dict[str, int]]
    unusable: list[dict[str, str]] = field(default_factory=list)
    leakage: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    folders: list[dict[str, str]] = field(default_factory=list)
    balance: dict[str, Any] = field(default_factory=dict)
    notes: list[dict[str, str]] = field(default_factory=list)
    near: dict[str, Any] = field(default_factory=dict)
    leaked_images: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    _LISTS = ("leakage", "conflicts", "unusable", "duplicates", "folders", "notes")

    def _n(self, name: str) -> int:
        return self.totals.get(name, len(getattr(self, name)))

    def problems(self) -> int:
        """Number of findings that need attention (notes excluded)."""
        return (self._n("unusable") + self._n("leakage") + self._n("conflicts")
                + self._n("duplicates") + self._n("folders")
                + len(self.balance.get("small_classes", [])))

    @property
    def exit_code(self) -> int:
        """0 when nothing needs attention, else 3 (``headstart check``)."""
        return 3 if self.problems() else 0

    @property
    def near_threshold(self) -> float | None:
        """The cosine threshold near duplicates were searched with, None if not searched."""
        return self.near.get("threshold") if self.near.get("searched") else None

    def summary(self) -> str:
        """One line: the problems by kind, leakage first, or ``no problems found``."""
        parts = []
        if self.leakage:
            parts.append(f"LEAKAGE: {self.leaked_images} held-out image(s) duplicate images "
                         "in training or another split")
        if self.conflicts:
            parts.append(f"{self._n('conflicts')} image(s) filed under two classes")
        if self.unusable:
            parts.append(f"{self._n('unusable')} unusable file(s)")
        if self.duplicates:
            parts.append(f"{self._n('duplicates')} duplicate group(s) within a class")
        if self.folders:
            parts.append(f"{self._n('folders')} folder problem(s)")
        if self.balance.get("small_classes"):
            parts.append(f"{len(self.balance['small_classes'])} class(es) with fewer than "
                         f"{FEW} images")
        return "; ".join(parts) if parts else "no problems found"

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready findings; ``limit`` caps each list (for model metadata)."""
        def cap(items: list[Any]) -> list[Any]:
            return items if limit is None else items[:limit]
        out = {"data": self.data, "layout": self.layout, "summary": self.summary(),
               "problems": self.problems(), "exit_code": self.exit_code,
               "leaked_images": self.leaked_images, "counts": self.counts,
               "leakage": cap(self.leakage), "conflicts": cap(self.conflicts),
               "unusable": cap(self.unusable), "duplicates": cap(self.duplicates),
               "folders": cap(self.folders), "balance": self.balance,
               "notes": cap(self.notes), "near_duplicates": self.near}
        totals = {k: self._n(k) for k in self._LISTS if self._n(k) > len(out[k])}
        if totals:
            out["totals"] = totals
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Health":
        """The findings written by :meth:`to_dict`."""
        return cls(data=d.get("data", ""), layout=d.get("layout", ""),
                   counts=d.get("counts", {}), balance=d.get("balance", {}),
                   near=d.get("near_duplicates", {}), leaked_images=d.get("leaked_images", 0),
                   totals=dict(d.get("totals", {})),
                   **{k: list(d.get(k, [])) for k in cls._LISTS})


class _Groups:
    """Union-find over entry positions."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _near_pairs(X: np.ndarray, rows: np.ndarray, facts: Sequence[FileFacts],
                threshold: float | None) -> tuple[list[tuple[int, int, float]], dict[str, Any]]:
    """Near-duplicate pairs among ``rows`` (entry positions) with features ``X``: close in
    feature space, confirmed by the thumbnails of their ``facts``."""
    n = len(X)
    if n < 2:
        return [], {"searched": False, "reason": "fewer than 2 images"}
    U = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)
    nn = np.empty(n, np.float32)
    blocks = range(0, n, 2048)
    for s in blocks:  # first pass: how close images typically are to their neighbour
        S = U[s:s + 2048] @ U.T
        S[np.arange(len(S)), np.arange(s, s + len(S))] = -1.0
        nn[s:s + len(S)] = S.max(axis=1)
    median = float(np.median(nn))
    t = threshold if threshold is not None else max(NEAR_FLOOR, median + NEAR_MARGIN)
    info = {"searched": t < 1.0, "threshold": round(t, 4),
            "median_nearest_similarity": round(median, 4)}
    if t >= 1.0:
        info["reason"] = (f"images are all alike in feature space (median nearest-neighbour "
                          f"cosine {median:.2f}), so features cannot tell duplicates apart; "
                          "exact duplicates are still found")
        return [], info
    candidates = []
    for s in blocks:
        if nn[s:s + 2048].max() < t:
            continue
        S = U[s:s + 2048] @ U.T
        i, j = np.nonzero(S >= t)
        keep = (i + s) < j
        candidates += [(int(a + s), int(b), float(S[a, b])) for a, b in zip(i[keep], j[keep])]
    pairs = [(int(rows[a]), int(rows[b]), c) for a, b, c in candidates
             if _same_picture(facts[rows[a]].thumb, facts[rows[b]].thumb)]
    return pairs, info


def assess(entries: Sequence[Entry], facts: Sequence[FileFacts], skipped: Sequence[Skipped],
           X: np.ndarray | None = None, index: np.ndarray | None = None, *,
           data: str = "", layout: str = "", folders: Sequence[dict[str, str]] = (),
           near_threshold: float | None = None,
           trained_on: TrainedOn | None = None) -> Health:
    """Findings about ``entries`` (with their ``facts``) and the files in ``skipped``.

    Args:
        X: ``(M, D)`` backbone features of the entries at positions ``index`` (the usable
            ones); without them only exact duplicates are found.
        folders: findings of :func:`folder_problems`.
        near_threshold: fixed cosine threshold instead of the adaptive one.
        trained_on: what a model was trained on (``evaluate``): entries with the same
            bytes as a training image, or whose features are near duplicates of one, are
            leakage.
    """
    bad = {s.path for s in skipped if s.kind == "file"}
    usable = [i for i, e in enumerate(entries) if e.path not in bad]
    h = Health(data=data, layout=layout, counts=_counts(entries, usable))
    h.unusable = sorted(({"path": s.path, "reason": s.reason} for s in skipped
                         if s.kind == "file"), key=lambda u: u["path"])
    h.folders = [{"path": s.path, "problem": s.reason} for s in skipped if s.kind == "folder"]
    h.folders += list(folders)
    h.notes = [{"path": s.path, "note": s.reason} for s in skipped if s.kind == "ignored"]
    h.notes += _image_notes(entries, facts, usable, data)
    _duplicates(h, entries, facts, usable, X, index, near_threshold)
    if trained_on is not None:
        _model_leakage(h, entries, facts, usable, trained_on, X, index)
    h.balance = _balance(h.counts)
    h.leakage.sort(key=lambda g: g["members"][0]["path"])
    return h


def _counts(entries: Sequence[Entry], usable: list[int]) -> dict[str, dict[str, int]]:
    """Usable images per split and class (classes sorted by name)."""
    counts: dict[str, dict[str, int]] = {}
    for i in usable:
        split = counts.setdefault(entries[i].split, {})
        split[entries[i].label] = split.get(entries[i].label, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


def _image_notes(entries: Sequence[Entry], facts: Sequence[FileFacts], usable: list[int],
                 data: str) -> list[dict[str, str]]:
    """Notes on multi-frame images, then on tiny ones (one note for more than 20)."""
    notes: list[dict[str, str]] = []
    tiny: list[dict[str, str]] = []
    for i in usable:
        f = facts[i]
        if f.frames > 1:
            notes.append({"path": entries[i].path,
                          "note": f"{f.frames} frames ({f.format}): the first is used"})
        if f.width and min(f.width, f.height) < TINY:
            tiny.append({"path": entries[i].path, "note": f"tiny image ({f.width}x"
                         f"{f.height}, < {TINY} px on a side): upscaled, detail is lost"})
    if len(tiny) > 20:  # a dataset of small images (MNIST): one note, not thousands
        sizes = sorted({n["note"].split("(")[1].split(",")[0] for n in tiny})
        tiny = [{"path": data, "note": f"{len(tiny)} tiny images (< {TINY} px on a side, "
                 f"e.g. {', '.join(sizes[:3])}): upscaled for the backbone, detail is lost; "
                 "compare with training from scratch ('headstart advise')"}]
    return notes + tiny


def _duplicates(h: Health, entries: Sequence[Entry], facts: Sequence[FileFacts],
                usable: list[int], X: np.ndarray | None, index: np.ndarray | None,
                near_threshold: float | None) -> None:
    """Group exact (same digest) and near duplicates into ``h``; set ``h.near``."""
    groups = _Groups(len(entries))
    kinds: dict[tuple[int, int], float] = {}
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i in usable:
        if facts[i].digest:
            by_digest[facts[i].digest].append(i)
    for members in by_digest.values():
        for j in members[1:]:
            groups.join(members[0], j)
    if X is not None and index is not None and len(index):
        pairs, h.near = _near_pairs(np.asarray(X, np.float32), np.asarray(index), facts,
                                    near_threshold)
        for a, b, c in pairs:
            groups.join(a, b)
            kinds[(a, b)] = c
    else:
        h.near = {"searched": False, "reason": "no features (exact duplicates only)"}
    components: dict[int, list[int]] = defaultdict(list)
    for i in usable:
        components[groups.find(i)].append(i)
    for members in components.values():
        if len(members) > 1:
            _file_group(h, [entries[i] for i in members],
                        exact=len({facts[i].digest for i in members}) == 1,
                        similarity=min((c for (a, b), c in kinds.items()
                                        if a in members), default=1.0))


@dataclass
class TrainedOn:
    """What a model saw in training: content hashes of its training images, their
    ``(M, D)`` features (a sample; unit norm) and the near-duplicate cosine threshold of its
    training data (None when near duplicates were not searched)."""

    digests: set[str]
    reference: np.ndarray | None = None
    near_threshold: float | None = None


def _model_leakage(h: Health, entries: Sequence[Entry], facts: Sequence[FileFacts],
                   usable: list[int], seen: TrainedOn, X: np.ndarray | None,
                   index: np.ndarray | None) -> None:
    """Leakage of evaluated images from a model's training images: exact, then near."""
    def add(i: int, kind: str, sim: float) -> None:
        what = ("an image" if kind == "exact" else
                f"a near duplicate (cosine {sim:.2f}) of an image")
        h.leakage.append({"kind": kind, "similarity": round(sim, 4), "labels_differ": False,
                          "members": [_member(entries[i]), {
                              "path": f"({what} the model was trained on)", "split": "train",
                              "label": ""}]})
        h.leaked_images += 1
    exact = {i for i in usable if facts[i].digest in seen.digests}
    for i in sorted(exact):
        add(i, "exact", 1.0)
    if X is None or index is None or not len(index) or seen.reference is None \
            or seen.near_threshold is None:
        return
    U = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)
    best = (U @ np.asarray(seen.reference, np.float32).T).max(axis=1)
    for row, i in enumerate(index):
        if int(i) not in exact and best[row] >= seen.near_threshold:
            add(int(i), "near", float(best[row]))


def _member(e: Entry) -> dict[str, str]:
    return {"path": e.path, "split": e.split, "label": e.label}


def _file_group(h: Health, members: list[Entry], exact: bool, similarity: float) -> None:
    members.sort(key=lambda e: (SPLIT_ORDER.get(SPLITS.get(e.split.lower(), ""), 3), e.path))
    splits = {e.split for e in members}
    labels = {e.label for e in members}
    group = {"kind": "exact" if exact else "near", "similarity": round(similarity, 4),
             "labels_differ": len(labels) > 1, "members": [_member(e) for e in members]}
    if len(splits) > 1:
        first = members[0].split
        h.leakage.append(group)
        h.leaked_images += sum(e.split != first for e in members)
    elif len(labels) > 1:
        h.conflicts.append(group)
    else:
        h.duplicates.append(group)


def _balance(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    train = counts.get("train") or next(iter(counts.values()), {})
    out: dict[str, Any] = {"imbalance_ratio": None, "small_classes": []}
    if train:
        out["imbalance_ratio"] = round(max(train.values()) / max(1, min(train.values())), 2)
        out["small_classes"] = [{"class": c, "images": n} for c, n in train.items() if n < FEW]
    split_classes = {s: set(c) for s, c in counts.items()}
    if "train" in split_classes:
        out["missing_from_split"] = {s: sorted(split_classes["train"] - c)
                                     for s, c in split_classes.items()
                                     if s != "train" and split_classes["train"] - c}
        out["not_in_train"] = {s: sorted(c - split_classes["train"])
                               for s, c in split_classes.items()
                               if s != "train" and c - split_classes["train"]}
    return out


def dataset_health(dataset: Dataset, source: str | os.PathLike | None,
                   facts: Sequence[FileFacts], skipped: Sequence[Skipped],
                   X: np.ndarray | None, index: np.ndarray | None
                   ) -> tuple[Health, list[str]]:
    """Health of the data ``train`` is fitting (its train and validation splits, in the
    order of :class:`Dataset`), leakage logged as a warning; and the content hashes of the
    usable training images. ``source`` is the dataset path (None for in-memory images)."""
    entries = entries_of("train", dataset.train) + (
        entries_of(dataset.val_split, dataset.val) if dataset.val is not None else [])
    h = assess(entries, facts, skipped, X, index,
               data=str(source) if source is not None else "in memory",
               layout=dataset.layout, folders=folder_problems(source) if source else ())
    bad = {s.path for s in skipped}
    digests = sorted({f.digest for e, f in zip(entries, facts)
                      if e.split == "train" and f.digest and e.path not in bad})
    if h.leakage:
        logger.warning("leakage: %d validation image(s) are copies of training images, so "
                       "validation accuracy is inflated; run 'headstart check %s'",
                       h.leaked_images, source)
    return h, digests


def check(source: str | os.PathLike, *, backbone: str | None = None,
          weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
          runtime: str = "auto", near: bool = True, near_threshold: float | None = None,
          progress: ProgressFn | None = None) -> Health:
    """Inspect every split of a dataset folder or CSV (see :mod:`headstart.io.dataset`).

    With ``near`` (default), features of the ``backbone`` (default efficientnet_lite0) are
    computed or read from the feature cache to find near duplicates; otherwise each image is
    decoded once to find the unusable ones.

    Raises:
        DataError: the path does not exist or is not a dataset.
        BackboneError: the backbone cannot be loaded.
        HeadstartError: ``near_threshold`` is not a cosine in (0, 1].
    """
    from ..backbone.build import DEFAULT_BACKBONE, load_backbone

    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise HeadstartError(param="near_threshold", expected="a cosine in (0, 1]",
                             got=near_threshold)
    from ..backbone.features import FeatureCache, extract_features, scan_images

    splits, skipped, kind = load_splits(source)
    entries = [e for name, images in splits.items() for e in entries_of(name, images)]
    if not entries and not skipped:
        raise DataError(f"{source}: no images found; expected one folder per class "
                        "(DATA/<class>/<images>), train/val folders, or a CSV path,label")
    paths = [e.path for e in entries]
    X = index = None
    if near and entries:  # one pass: hashes, headers, thumbnails and features
        feats = extract_features(load_backbone(backbone or DEFAULT_BACKBONE, weights,
                                               cache_dir=cache_dir), paths,
                                 FeatureCache(cache_dir), progress=progress, runtime=runtime,
                                 thumbs=True)
        X, index, bad, facts = feats.X, feats.index, feats.skipped, feats.facts
    else:  # one pass: hashes, headers and a full decode of each file
        _, bad, facts = scan_images(paths)
    h = assess(entries, facts, list(skipped) + bad, X, index, data=str(source), layout=kind,
               folders=folder_problems(source), near_threshold=near_threshold)
    train = h.counts.get("train") or next(iter(h.counts.values()), {})
    if len(train) < 2:
        h.folders.append({"path": str(source), "problem": (
            f"only {len(train)} class{'' if len(train) == 1 else 'es'} with usable images"
            + (f" ({', '.join(train)})" if train else "") + ": a classifier needs at least 2")})
    logger.info("checked %s: %s", source, h.summary())
    return h
