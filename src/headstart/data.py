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
from typing import Iterable, Sequence

import numpy as np

from ._fs import FileProblem, file_problem, read_regular
from .decode import UNSUPPORTED_EXTENSIONS, unsupported_reason
from .errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Dataset",
    "ImageSet",
    "Skipped",
    "find_images",
    "links_back",
    "load_dataset",
    "load_splits",
    "load_labelled",
    "drop_unreadable_classes",
    "stratified_split",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VAL_SPLIT_NAMES = ("val", "valid", "validation", "test")


@dataclass(frozen=True)
class Skipped:
    """A file or folder left out of the run, with the reason.

    ``kind``: ``file`` (an unusable file), ``folder`` (a folder problem: empty class folder,
    unreadable folder, link loop, unknown split) or ``ignored`` (hidden files and folders).
    """

    path: str
    reason: str
    kind: str = "file"


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

    def subset(self, index: Sequence[int]) -> "ImageSet":
        return ImageSet([self.paths[i] for i in index],
                        [self.labels[i] for i in index] if self.labels else [],
                        self.classes)


@dataclass
class Dataset:
    """Training images, optional validation images, and the files that were skipped."""

    train: ImageSet
    val: ImageSet | None
    layout: str
    skipped: list[Skipped] = field(default_factory=list)
    val_split: str = "val"


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


HIDDEN_FILE, HIDDEN_FOLDER = "hidden file, ignored", "hidden folder, ignored"
LINK_LOOP, CANNOT_LIST = "symbolic link loop, ignored", "cannot list folder"


def _skip(path: Path, reason: str) -> Skipped:
    kind = ("ignored" if reason in (HIDDEN_FILE, HIDDEN_FOLDER) else
            "folder" if reason == LINK_LOOP or reason.startswith(CANNOT_LIST) else "file")
    return Skipped(str(path), reason, kind)


def links_back(folder: Path) -> bool:
    """True for a symbolic link to its own folder or one above it (following it loops)."""
    if not folder.is_symlink():
        return False
    real, here = os.path.realpath(folder), os.path.realpath(folder.parent)
    return here == real or here.startswith(real.rstrip(os.sep) + os.sep)


def _files_under(folder: Path) -> Iterable[tuple[Path, str | None]]:
    """Files under ``folder`` (symlinks followed, loops cut) with a reason to skip or None."""
    seen: set[str] = set()
    problems: list[tuple[Path, str]] = []

    def unreadable(e: OSError) -> None:
        problems.append((Path(e.filename), f"{CANNOT_LIST}: {e.strerror}"))

    def loops(root: str, d: str) -> bool:
        """A linked folder that leads back up the tree or to where the walk already went."""
        path = Path(root) / d
        return links_back(path) or os.path.realpath(path) in seen

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        seen.add(os.path.realpath(root))
        yield from problems
        problems.clear()
        for d in sorted(d for d in dirs if not d.startswith(".") and loops(root, d)):
            yield Path(root) / d, LINK_LOOP
        dirs[:] = [d for d in dirs if d.startswith(".") or not loops(root, d)]
        for d in sorted(d for d in dirs if d.startswith(".")):
            yield Path(root) / d, HIDDEN_FOLDER
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = Path(root) / f
            if f.startswith("."):
                yield path, HIDDEN_FILE
            else:  # a FIFO, socket or device (or a link to one) is never opened
                yield path, file_problem(path)
    yield from problems


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """Expand files and folders (searched recursively) into image files.

    Files without an image extension inside folders are skipped with a reason; files named
    explicitly are kept whatever their extension (decoding decides).

    Raises:
        DataError: a path does not exist.
    """
    found: list[Path] = []
    skipped: list[Skipped] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f, problem in _files_under(p):
                ext = f.suffix.lower()
                if problem is not None:
                    skipped.append(_skip(f, problem))
                elif ext in IMAGE_EXTENSIONS:
                    found.append(f)
                elif ext in UNSUPPORTED_EXTENSIONS:
                    skipped.append(Skipped(str(f), unsupported_reason(ext)))
                else:
                    skipped.append(Skipped(str(f), f"not an image type ({ext or 'none'})"))
        elif p.exists():
            problem = file_problem(p)
            if problem is None:
                found.append(p)
            else:
                skipped.append(Skipped(str(p), problem))
        else:
            raise DataError(f"path not found: {p}")
    return found, skipped


def _class_folders(root: Path) -> list[Path]:
    """Visible sub-folders of ``root``, except links back to it or above (loops)."""
    try:
        return sorted(d for d in root.iterdir()
                      if d.is_dir() and not _is_hidden(d) and not links_back(d))
    except OSError as e:
        raise DataError(f"cannot list {root}: {e.strerror or e}") from None


def _loops(root: Path) -> list[Skipped]:
    """Sub-folders of ``root`` that are links back to it or above, reported as loops."""
    return [Skipped(str(d), LINK_LOOP, "folder") for d in sorted(root.iterdir())
            if not _is_hidden(d) and d.is_dir() and links_back(d)]


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
               if not f.is_dir() and not _is_hidden(f)] + _loops(root)
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
        if split not in ("train",) + VAL_SPLIT_NAMES:
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
    root = _dataset_path(source)
    val_set: ImageSet | None = None
    val_split = "val"
    if root.is_file():
        entries, skipped = _read_csv(root)
        classes = sorted({lab for _, lab, s in entries if s == "train"})
        train = _csv_set(entries, "train", classes, root)
        val_set = _csv_set(entries, "val", classes, root) or None
        layout = "csv"
    else:
        split_dirs = {d.name.lower(): d for d in _class_folders(root)}
        if "train" in split_dirs:
            train, skipped = _scan_class_folders(split_dirs["train"])
            layout = "train/val"
            for name in VAL_SPLIT_NAMES:
                if name in split_dirs and val is None:
                    val_set, more = _scan_class_folders(split_dirs[name], train.classes)
                    skipped += more
                    val_split = split_dirs[name].name
                    break
        else:
            train, skipped = _scan_class_folders(root)
            layout = "class folders"
    if val is not None:
        if not Path(val).is_dir():
            raise DataError(f"--val: folder not found: {val}")
        val_set, more = _scan_class_folders(Path(val), train.classes)
        skipped += more
    check_classes(train.labels, train.classes, str(root))
    return Dataset(train=train, val=val_set, layout=layout, skipped=skipped,
                   val_split=val_split)


def load_splits(source: str | os.PathLike) -> tuple[dict[str, ImageSet], list[Skipped], str]:
    """Every split of a dataset, for checking it: ``({split: images}, skipped, layout)``.

    Unlike :func:`load_dataset`, a ``train/val/test`` folder gives all three splits, and
    classes are not checked (a split may have classes the others lack).

    Raises:
        DataError: missing path, or a file that is not a CSV.
    """
    root = _dataset_path(source)
    if root.is_file():
        entries, skipped = _read_csv(root)
        classes = sorted({lab for _, lab, _ in entries})
        sets = {which: _csv_set(entries, which, classes, root) for which in ("train", "val")}
        return {k: v for k, v in sets.items() if len(v)}, skipped, "csv"
    split_dirs = {d.name.lower(): d for d in _class_folders(root)}
    if "train" not in split_dirs:
        images, skipped = _scan_class_folders(root)
        return {"train": images}, skipped, "class folders"
    splits: dict[str, ImageSet] = {}
    skipped = []
    for name in ("train",) + VAL_SPLIT_NAMES:
        if name in split_dirs:
            images, more = _scan_class_folders(split_dirs[name])
            splits[split_dirs[name].name] = images
            skipped += more
    skipped += [Skipped(str(d), "folder beside the train split is not a known split "
                        "(val, valid, validation, test): ignored", "folder")
                for key, d in split_dirs.items() if key not in ("train",) + VAL_SPLIT_NAMES]
    return splits, skipped, "train/val"


def load_labelled(source: str | os.PathLike, classes: list[str]
                  ) -> tuple[ImageSet, list[Skipped]]:
    """Labelled images to evaluate a model with classes ``classes``.

    From a ``train/val|test`` folder the held-out split is used (``test`` first); from a CSV
    with a ``split`` column, its non-train rows; otherwise every image.

    Raises:
        DataError: missing path, or labels that are not among ``classes``.
    """
    root = _dataset_path(source)
    if root.is_file():
        entries, skipped = _read_csv(root)
        which = "val" if any(s == "val" for _, _, s in entries) else "train"
        return _csv_set(entries, which, classes, root), skipped
    split_dirs = {d.name.lower(): d for d in _class_folders(root)}
    for name in ("test",) + VAL_SPLIT_NAMES[:-1]:
        if name in split_dirs and "train" in split_dirs:
            return _scan_class_folders(split_dirs[name], classes)
    return _scan_class_folders(root, classes)


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
