"""Finding labelled images and reading them as RGB.

Three layouts are accepted:

* ``DATA/<class>/<images>`` (sub-folders of a class folder are searched too);
* ``DATA/train/<class>/...`` with ``DATA/val|valid|validation|test/<class>/...``;
* a CSV file with ``path,label`` columns (paths relative to the CSV), optionally a ``split``
  column with ``train`` / ``val`` values.

Files that cannot be used are never fatal: each is recorded as a :class:`Skipped` with its
path and reason, and the run goes on with the rest.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io.files import FileProblem, file_problem, read_regular
from ..io.decode import UnreadableImage, open_image
from ..errors import DataError
from ..io.walk import IMAGE_EXTENSIONS, LINK_LOOP, Skipped, find_images, is_hidden, links_back

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Dataset",
    "ImageSet",
    "Layout",
    "Skipped",
    "find_images",
    "layout",
    "links_back",
    "median_short_side",
    "split_rows",
    "load_dataset",
    "load_splits",
    "load_labelled",
    "drop_unreadable_classes",
    "stratified_split",
]

logger = logging.getLogger(__name__)

# Split folder names (lower case) in the order they are looked for, and their role.
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # by role: how splits are listed


@dataclass
class ImageSet:
    """Image files with integer labels.

    ``labels[i]`` indexes ``classes``; ``labels`` is empty for unlabelled images.
    """

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Number of images per class name, in class order."""
        c = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c)}



@dataclass
class Dataset:
    """Training images, optional validation images, and the files that were skipped."""

    train: ImageSet
    val: ImageSet | None
    layout: str
    skipped: list[Skipped] = field(default_factory=list)
    val_split: str = "val"

    def rows(self) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """All images, training first: ``(paths (N,), labels (N,), is_train (N,) bool)``."""
        val = self.val if self.val is not None else ImageSet([], [], self.train.classes)
        return (list(self.train.paths) + list(val.paths),
                np.asarray(self.train.labels + val.labels, dtype=int),
                np.arange(len(self.train) + len(val)) < len(self.train))


@dataclass(frozen=True)
class Layout:
    """How a dataset folder is organised (see :func:`layout`).

    ``kind``: ``csv``, ``class folders`` or ``train/val``; ``splits``: for ``train/val``,
    each split folder by its name on disk, in :data:`SPLITS` order; ``others``: folders
    beside ``train`` that are not splits.
    """

    kind: str
    root: Path
    splits: dict[str, Path] = field(default_factory=dict)
    others: tuple[Path, ...] = ()

    def first(self, *roles_or_names: str) -> tuple[str, Path] | None:
        """The first split (name, folder) whose name, or role, is among ``roles_or_names``,
        in that order."""
        for want in roles_or_names:
            for name, folder in self.splits.items():
                if name.lower() == want:
                    return name, folder
        return None

    @property
    def class_parents(self) -> list[Path]:
        """The folders whose sub-folders are classes (each split, or the root)."""
        return list(self.splits.values()) if self.splits else [self.root]


def layout(source: str | os.PathLike) -> Layout:
    """The :class:`Layout` of a dataset path (checked to be a folder or a CSV file).

    Raises:
        DataError: the path does not exist, is not a folder nor a CSV, or cannot be listed.
    """
    root = _dataset_path(source)
    if root.is_file():
        return Layout("csv", root)
    tops = {d.name.lower(): d for d in _class_folders(root)}
    if "train" not in tops:
        return Layout("class folders", root)
    splits = {tops[k].name: tops[k] for k in SPLITS if k in tops}
    return Layout("train/val", root, splits,
                  tuple(d for k, d in tops.items() if k not in SPLITS))


def _class_folders(root: Path) -> list[Path]:
    """Visible sub-folders of ``root``, except links back to it or above (loops)."""
    try:
        return sorted(d for d in root.iterdir()
                      if d.is_dir() and not is_hidden(d) and not links_back(d))
    except OSError as e:
        raise DataError(f"cannot list {root}: {e.strerror or e}") from None


def _loops(root: Path) -> list[Skipped]:
    """Sub-folders of ``root`` that are links back to it or above, reported as loops."""
    return [Skipped(str(d), LINK_LOOP, "folder") for d in sorted(root.iterdir())
            if not is_hidden(d) and d.is_dir() and links_back(d)]


def _scan_class_folders(root: Path, classes: list[str] | None = None
                        ) -> tuple[ImageSet, list[Skipped]]:
    folders = _class_folders(root)
    names = [d.name for d in folders]
    if classes is None:
        classes = names
    else:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise DataError(f"{root}: class folder(s) {extra} do not exist in the training "
                            f"classes {classes}")
    skipped = [Skipped(str(f), "not inside a class folder") for f in sorted(root.iterdir())
               if not f.is_dir() and not is_hidden(f)] + _loops(root)
    found = []
    for d in folders:
        files, bad = find_images([d])
        skipped += bad
        if not files:
            skipped.append(Skipped(str(d), "empty class folder (no images), class ignored"
                                   if classes is names else "empty class folder (no images)",
                                   "folder"))
        found.append((d.name, files))
    if classes is names:  # training classes: a folder without images is not a class
        classes = [name for name, files in found if files]
    paths = [f for _, files in found for f in files]
    labels = [classes.index(name) for name, files in found for _ in files]
    return ImageSet(paths, labels, classes), skipped


def _read_csv(path: Path) -> tuple[list[tuple[Path, str, str]], list[Skipped]]:
    """Rows of a ``path,label[,split]`` CSV as (file, label, "train"|"val"), and skips."""
    try:
        text = read_regular(path).decode("utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text, newline=""))
                if r and any(c.strip() for c in r)]
    except (FileProblem, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV {path}: {e}") from None
    if not rows:
        raise DataError(f"CSV {path} is empty; expected columns path,label")
    header = [c.strip().lower() for c in rows[0]]
    first = 1
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        isplit = header.index("split") if "split" in header else None
        rows, first = rows[1:], 2
        if not rows:
            raise DataError(f"CSV {path} has a header but no rows; expected one row per "
                            "image: path,label")
    else:
        ip, il, isplit = 0, 1, None
    entries: list[tuple[Path, str, str]] = []
    skipped: list[Skipped] = []
    for n, r in enumerate(rows, start=first):
        if len(r) <= max(ip, il) or not r[il].strip():
            raise DataError(f"CSV {path}, line {n}: expected path,label, got {r}")
        f = Path(r[ip].strip())
        f = f if f.is_absolute() else path.parent / f
        split = r[isplit].strip().lower() if isplit is not None and len(r) > isplit else "train"
        if split not in SPLITS:
            raise DataError(f"CSV {path}, line {n}: split must be train or val, got {split!r}")
        problem = file_problem(f)
        if problem is not None:  # missing, a folder, a FIFO, a device...
            skipped.append(Skipped(str(f), problem))
            continue
        entries.append((f, r[il].strip(), "train" if split == "train" else "val"))
    return entries, skipped


def _csv_set(entries: list[tuple[Path, str, str]], which: str, classes: list[str],
             where: Path) -> ImageSet:
    chosen = [(f, lab) for f, lab, s in entries if s == which]
    unknown = sorted({lab for _, lab in chosen} - set(classes))
    if unknown:
        raise DataError(f"CSV {where}: labels {unknown} are not among the classes {classes}")
    return ImageSet([f for f, _ in chosen], [classes.index(lab) for _, lab in chosen], classes)


def _dataset_path(source: str | os.PathLike) -> Path:
    """``source`` as a Path, checked to be a folder or a CSV file.

    Raises:
        DataError: it does not exist, or is a file that is not a CSV.
    """
    root = Path(source)
    if not root.exists():
        raise DataError(f"data path not found: {root}")
    if root.is_dir():
        return root
    if root.suffix.lower() != ".csv":
        raise DataError(f"{root} is a file; expected a folder of class folders or a CSV")
    problem = file_problem(root)
    if problem is not None:
        raise DataError(f"{root}: {problem}")
    return root


def load_dataset(source: str | os.PathLike, val: str | os.PathLike | None = None) -> Dataset:
    """Find the labelled images of a dataset (see the module docstring for layouts).

    Args:
        source: a folder or a CSV file.
        val: an explicit validation folder (``<class>/<images>``), overriding any split
            found in ``source``.

    Raises:
        DataError: missing path, fewer than 2 classes, or a class without images.
    """
    lay = layout(source)
    val_set: ImageSet | None = None
    val_split = "val"
    if lay.kind == "csv":
        entries, skipped = _read_csv(lay.root)
        classes = sorted({lab for _, lab, s in entries if s == "train"})
        train = _csv_set(entries, "train", classes, lay.root)
        val_set = _csv_set(entries, "val", classes, lay.root) or None
    elif lay.kind == "train/val":
        train, skipped = _scan_class_folders(lay.first("train")[1])  # type: ignore[index]
        held = lay.first("val", "valid", "validation", "test")
        if held is not None and val is None:
            val_split, folder = held
            val_set, more = _scan_class_folders(folder, train.classes)
            skipped += more
    else:
        train, skipped = _scan_class_folders(lay.root)
    if val is not None:
        if not Path(val).is_dir():
            raise DataError(f"folder not found: {val}", param="val")
        val_set, more = _scan_class_folders(Path(val), train.classes)
        skipped += more
    check_classes(train.labels, train.classes, str(lay.root))
    return Dataset(train=train, val=val_set, layout=lay.kind, skipped=skipped,
                   val_split=val_split)


def load_splits(source: str | os.PathLike) -> tuple[dict[str, ImageSet], list[Skipped], str]:
    """Every split of a dataset, for checking it: ``({split: images}, skipped, layout)``.

    Unlike :func:`load_dataset`, a ``train/val/test`` folder gives all three splits, and
    classes are not checked (a split may have classes the others lack).

    Raises:
        DataError: missing path, or a file that is not a CSV.
    """
    lay = layout(source)
    if lay.kind == "csv":
        entries, skipped = _read_csv(lay.root)
        classes = sorted({lab for _, lab, _ in entries})
        sets = {which: _csv_set(entries, which, classes, lay.root) for which in ("train", "val")}
        return {k: v for k, v in sets.items() if len(v)}, skipped, "csv"
    if lay.kind == "class folders":
        images, skipped = _scan_class_folders(lay.root)
        return {"train": images}, skipped, lay.kind
    splits: dict[str, ImageSet] = {}
    skipped = []
    for name, folder in lay.splits.items():
        splits[name], more = _scan_class_folders(folder)
        skipped += more
    skipped += [Skipped(str(d), "folder beside the train split is not a known split "
                        "(val, valid, validation, test): ignored", "folder")
                for d in lay.others]
    return splits, skipped, lay.kind


def load_labelled(source: str | os.PathLike, classes: list[str]
                  ) -> tuple[ImageSet, list[Skipped]]:
    """Labelled images to evaluate a model with classes ``classes``.

    From a ``train/val|test`` folder the held-out split is used (``test`` first); from a CSV
    with a ``split`` column, its non-train rows; otherwise every image.

    Raises:
        DataError: missing path, or labels that are not among ``classes``.
    """
    lay = layout(source)
    if lay.kind == "csv":
        entries, skipped = _read_csv(lay.root)
        which = "val" if any(s == "val" for _, _, s in entries) else "train"
        return _csv_set(entries, which, classes, lay.root), skipped
    held = lay.first("test", "val", "valid", "validation")
    return _scan_class_folders(held[1] if held else lay.root, classes)


def check_classes(labels: Sequence[int], classes: list[str], where: str) -> None:
    """Raise :class:`DataError` unless there are >= 2 classes, each with >= 1 image.

    ``labels`` are the images' class indices into ``classes``.
    """
    if len(classes) < 2:
        found = f"only {classes}" if classes else "none"
        raise DataError(f"{where}: need at least 2 classes (one folder per class), found "
                        f"{found}")
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DataError(f"{where}: class(es) {empty} have no usable images")


def drop_unreadable_classes(train: ImageSet, y: np.ndarray, is_train: np.ndarray
                            ) -> tuple[list[str], np.ndarray, np.ndarray, list[Skipped]]:
    """Leave out the classes of ``train`` none of whose training images could be read, as
    an empty class folder is left out, with a reason.

    Args:
        y, is_train: ``(N,)`` labels (into ``train.classes``) and training flags of the
            usable images.

    Returns:
        ``(classes, y, keep, skipped)``: the remaining classes, ``(N,)`` labels into them
        (-1 for a dropped class), ``(N,)`` which images to keep (validation images of a
        dropped class are left out too) and one :class:`Skipped` per dropped class.
    """
    classes = list(train.classes)
    y = np.asarray(y, dtype=int)
    present = np.bincount(y[np.asarray(is_train, bool)], minlength=len(classes)) > 0
    if present.all():
        return classes, y, np.ones(len(y), bool), []
    new = np.cumsum(present) - 1
    skipped = []
    for c in np.flatnonzero(~present):
        files = [str(f) for f, lab in zip(train.paths, train.labels) if lab == c]
        val = int((y == c).sum())
        skipped.append(Skipped(
            os.path.commonpath(files) if len(files) > 1 else (files or [classes[c]])[0],
            f"class {classes[c]!r} ignored: none of its {len(files)} training image(s) "
            "could be read" + (f"; its {val} validation image(s) are left out too"
                               if val else ""), "folder"))
    mapped = np.where(present[y], new[y], -1)
    return [c for c, p in zip(classes, present) if p], mapped, mapped >= 0, skipped


def split_rows(y: np.ndarray, is_train: np.ndarray, val_fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices: the validation rows if any, else a stratified
    ``val_fraction`` of the training rows (the fold the head-only accuracy is measured on).
    """
    train_rows, val_rows = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if not len(val_rows):
        tr, va = stratified_split(y[train_rows], val_fraction, seed)
        train_rows, val_rows = train_rows[tr], train_rows[va]
    return train_rows, val_rows


def median_short_side(paths: Sequence[Any], sample: int = 64) -> float | None:
    """Median shorter side (pixels) of up to ``sample`` evenly spaced images (headers only)."""
    sides = []
    for p in list(paths)[:: max(1, len(paths) // sample)][:sample]:
        try:
            with open_image(p) as im:
                sides.append(min(im.size))
        except UnreadableImage:  # reported already
            continue
    return float(np.median(sides)) if sides else None


def stratified_split(labels: Sequence[int], fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, held-out), holding out ``fraction`` of each class.

    Each class keeps at least one training image; a class with one image has none held out.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    train, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held += list(idx[:k])
        train += list(idx[k:])
    return np.sort(np.asarray(train, dtype=int)), np.sort(np.asarray(held, dtype=int))
