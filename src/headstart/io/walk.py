"""Finding image files under folders: links followed, loops cut, and every file that is
not used named with the reason (hidden, not an image type, an unsupported format, not a
regular file such as a named pipe or a device, a broken link).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..io.files import file_problem
from ..io.decode import HEIF_EXTENSIONS, UNSUPPORTED_EXTENSIONS, unsupported_reason
from ..errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "LINK_LOOP", "SET_ASIDE", "Skipped", "existing",
           "find_images", "is_hidden", "iter_images", "links_back"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif"}
    | HEIF_EXTENSIONS)
@dataclass(frozen=True)
class Skipped:
    """A file or folder left out of the run, with the reason.

    ``kind``: ``file`` (an unusable file), ``folder`` (a folder problem: empty class folder,
    unreadable folder, link loop, unknown split) or ``ignored`` (hidden files and folders).
    """

    path: str
    reason: str
    kind: str = "file"


SET_ASIDE = "_set_aside"  # where `headstart review --apply` puts images taken out of a class


def is_hidden(path: Path) -> bool:
    """A dot file or folder, or the review's ``_set_aside`` folder: never read as data."""
    return path.name.startswith(".") or path.name == SET_ASIDE


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


def iter_images(paths: Iterable[str | os.PathLike]) -> Iterator[Path | Skipped]:
    """Image files under ``paths`` (folders searched recursively, in sorted order), one at
    a time, with a :class:`Skipped` for each file not used: a lazy :func:`find_images`
    (flat memory over millions of files).

    Raises:
        DataError: a path does not exist (when it is reached).
    """
    for p in map(Path, paths):
        if p.is_dir():
            for f, problem in _files_under(p):
                ext = f.suffix.lower()
                if problem is not None:
                    yield _skip(f, problem)
                elif ext in IMAGE_EXTENSIONS:
                    yield f
                elif ext in UNSUPPORTED_EXTENSIONS:
                    yield Skipped(str(f), unsupported_reason(ext))
                else:
                    yield Skipped(str(f), f"not an image type ({ext or 'none'})")
        elif p.exists():
            problem = file_problem(p)
            yield p if problem is None else Skipped(str(p), problem)
        else:
            raise DataError(f"path not found: {p}")


def existing(paths: Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    """``paths`` as a list, once each is known to exist (checked before anything is
    walked or written: a mistyped path must not cost the user their old output file).

    Raises:
        DataError: a path does not exist.
    """
    paths = list(paths)
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"path not found: {p}")
    return paths


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """Expand files and folders (searched recursively) into image files.

    Files without an image extension inside folders are skipped with a reason; files named
    explicitly are kept whatever their extension (decoding decides).

    Raises:
        DataError: a path does not exist.
    """
    paths = existing(paths)  # every path checked before any folder is walked
    found: list[Path] = []
    skipped: list[Skipped] = []
    for item in iter_images(paths):
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            found.append(item)
    return found, skipped
