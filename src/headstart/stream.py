"""Streaming prediction: any number of images with flat memory, resumable after a crash.

:func:`predict_stream` lists the files lazily (:func:`headstart.walk.iter_images`),
predicts them in chunks of ``chunk`` images (decode threads and the engine as in
:func:`headstart.features.extract_features`, no feature cache: features of millions of
images are not worth keeping) and writes each row to a CSV or JSON-lines file as soon as
its chunk is done, flushed. Each row carries the image's content hash, so ``resume=True``
skips the images already in the file (same path, same bytes) and appends the rest: a run
killed at any point and resumed ends with exactly one row per readable image. A line cut
short by the kill is dropped before appending.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from ._fs import digest_bytes, read_regular
from .errors import DataError
from .model import Classifier, Predictions
from .walk import Skipped, existing, iter_images

__all__ = ["StreamProgress", "StreamResult", "Writer", "chunks", "done_rows", "open_writer",
           "output_format", "pending", "predict_stream", "unchanged"]

logger = logging.getLogger(__name__)

StreamProgress = Callable[[int, float], None]  # (images done, images per second)


@dataclass
class StreamResult:
    """What :func:`predict_stream` did: ``written`` rows this run, ``resumed`` images found
    already done in the file, ``skipped`` files with their reason, per-class ``counts`` of
    the rows written this run, and the wall ``seconds``."""

    written: int = 0
    resumed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def output_format(path: Path, fmt: str | None) -> str:
    """``csv`` or ``jsonl``: ``fmt``, else from the suffix of ``path``."""
    fmt = fmt or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise DataError(f"fmt: expected csv or jsonl, got {fmt!r}")
    return fmt


def done_rows(path: Path, fmt: str) -> dict[str, str]:
    """``{path: content hash}`` of the complete rows of an earlier run (a last line without
    its newline, cut by a kill, is truncated away)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
        data = data[:end]
    text = data.decode("utf-8", errors="surrogateescape")
    done: dict[str, str] = {}
    try:
        if fmt == "csv":
            for row in csv.DictReader(io.StringIO(text)):
                done[row["path"]] = row["content_hash"]
        else:
            for line in text.splitlines():
                if line.strip():
                    row = json.loads(line)
                    done[row["path"]] = row["content_hash"]
    except (KeyError, ValueError, csv.Error) as e:
        raise DataError(f"{path}: cannot resume from this file: not a headstart predict "
                        f"output ({e})") from None
    return done


def unchanged(path: Path, digest: str) -> bool:
    """``path`` still holds the bytes of content hash ``digest``."""
    try:
        return digest_bytes(read_regular(path)) == digest
    except (OSError, ValueError):
        return False


def chunks(items: Iterable[Path | Skipped], size: int, skipped: list[Skipped]
           ) -> Iterator[list[Path]]:
    """Lists of up to ``size`` image paths from ``items``; the :class:`Skipped` ones are
    appended to ``skipped``."""
    chunk: list[Path] = []
    for item in items:
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pending(files: list[Path], done: dict[str, str]) -> list[Path]:
    """The ``files`` a resumed run still has to predict: not in ``done``, or changed."""
    return [f for f in files if str(f) not in done or not unchanged(f, done[str(f)])]


@contextmanager
def open_writer(out: Path, fmt: str, classes: list[str], resume: bool) -> Iterator["Writer"]:
    """A :class:`Writer` on ``out``: appended to when resuming (the header only if the file
    is empty), else replaced."""
    header = not (resume and out.exists() and out.stat().st_size > 0)
    with out.open("a" if resume else "w", newline="", encoding="utf-8",
                  errors="surrogateescape") as fh:
        yield Writer(fh, fmt, classes, header)


class Writer:
    """Rows to a CSV or JSON-lines file (see :func:`predict_stream` for the columns)."""

    def __init__(self, fh: TextIO, fmt: str, classes: list[str], header: bool) -> None:
        self.fh, self.fmt, self.classes = fh, fmt, classes
        self.csv = csv.writer(fh) if fmt == "csv" else None
        if header and self.csv is not None:
            self.csv.writerow(["path", "label", "probability"] +
                              [f"p_{c}" for c in classes] + ["unknown", "content_hash"])

    def row(self, path: str, label: str, proba: Any, unknown: bool, unknown_score: float,
            digest: str) -> None:
        if self.csv is not None:
            self.csv.writerow([path, label, f"{float(proba.max()):.6f}"] +
                              [f"{float(v):.6f}" for v in proba] + [int(unknown), digest])
        else:
            self.fh.write(json.dumps({
                "path": path, "label": label, "probability": float(proba.max()),
                "probabilities": {c: float(v) for c, v in zip(self.classes, proba)},
                "unknown": unknown, "unknown_score": float(unknown_score),
                "content_hash": digest}, ensure_ascii=False) + "\n")

    def rows(self, pred: Predictions, digests: dict[str, str | None]) -> None:
        for i, src in enumerate(pred.sources):
            self.row(src, pred.labels[i], pred.proba[i], bool(pred.rejected[i]),
                     float(pred.ood_score[i]), digests.get(src) or "")
        self.flush()

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())


def predict_stream(clf: Classifier, paths: Iterable[str | os.PathLike], out: str | os.PathLike,
                   fmt: str | None = None, resume: bool = False, chunk: int = 256,
                   progress: StreamProgress | None = None) -> StreamResult:
    """Predict every image under ``paths`` (files or folders, searched recursively) into
    ``out`` (``fmt``: ``csv`` or ``jsonl``, default from the suffix), see the module
    docstring. Without ``resume`` an existing ``out`` is replaced.

    CSV columns: ``path, label, probability, p_<class>..., unknown (0/1), content_hash``;
    JSON lines: ``path, label, probability, probabilities, unknown, unknown_score,
    content_hash``.

    Raises:
        DataError: a path does not exist, or ``out`` cannot be resumed from.
    """
    t0 = time.perf_counter()
    out, fmt = Path(out), output_format(Path(out), fmt)
    if chunk < 1:
        raise DataError(f"chunk: expected >= 1, got {chunk}")
    paths = existing(paths)
    done = done_rows(out, fmt) if resume else {}
    result = StreamResult()
    counts = dict.fromkeys(clf.classes_, 0)
    with open_writer(out, fmt, list(clf.classes_), resume) as writer:
        for files in chunks(iter_images(paths), chunk, result.skipped):
            todo = pending(files, done)
            result.resumed += len(files) - len(todo)
            if not todo:
                continue
            pred = clf.predict_images(todo)
            digests = {str(f): facts.digest for f, facts in zip(todo, pred.facts or [])}
            writer.rows(pred, digests)
            result.skipped += pred.skipped
            result.written += len(pred.sources)
            for label in pred.labels:
                counts[label] = counts.get(label, 0) + 1
            if progress:
                elapsed = time.perf_counter() - t0
                progress(result.written + result.resumed, result.written / max(elapsed, 1e-9))
    result.counts, result.seconds = counts, round(time.perf_counter() - t0, 2)
    logger.info("predicted %d image(s) into %s (%d already there) in %.1f s", result.written,
                out, result.resumed, result.seconds)
    return result
