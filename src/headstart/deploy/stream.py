"""Streaming prediction: any number of images with flat memory, resumable after a crash.

:func:`predict_stream` lists the files lazily (:func:`headstart.io.walk.iter_images`),
predicts them in chunks of ``chunk`` images (decode threads and the engine as in
:func:`headstart.backbone.features.extract_features`, no feature cache: features of millions of
images are not worth keeping) and writes each row to a CSV or JSON-lines file as soon as
its chunk is done, flushed. Each row carries the image's content hash, so ``resume=True``
skips the images already in the file (same path, same bytes) and appends the rest: a run
killed at any point and resumed ends with exactly one row per readable image. A line cut
short by the kill is dropped before appending.

The output file (:func:`open_output`) is checked like an input (a regular file or nothing
yet: never a named pipe, which would block forever, a device or a folder) and has one
writer at a time (an advisory lock; a second run on the same file is refused). Resuming,
its rows must be this model's (same columns, same classes), else it is refused untouched.
An image whose bytes changed since its row gets a new row, and when the run ends the file
is rewritten atomically without the old one: the file always holds one row per image.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from ..io.files import check_output, digest_bytes, load_json, read_regular
from ..errors import DataError, PathError
from ..fit.classifier import Classifier, Predictions
from ..io.walk import Skipped, existing, iter_images

__all__ = ["Output", "StreamProgress", "StreamResult", "Writer", "chunks", "header",
           "open_output", "output_format", "pending", "predict_stream", "unchanged"]

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
        raise DataError(param="fmt", expected="csv or jsonl", got=fmt)
    return fmt


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


def header(classes: list[str]) -> list[str]:
    """The columns of a CSV output for a model of ``classes``."""
    return ["path", "label", "probability"] + [f"p_{c}" for c in classes] + \
        ["unknown", "content_hash"]


def _complete(data: bytes, fmt: str, classes: list[str], out: Path) -> tuple[dict[str, str], int]:
    """``({path: content hash}, end)`` of the complete rows of an earlier run's ``data``,
    ``end`` where they stop (a last line cut by a kill lies beyond); checked to be rows of a
    model of ``classes``.

    Raises:
        DataError: not a headstart predict output of this model (the file is untouched).
    """
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="surrogateescape")
    cut = data[end:].decode("utf-8", errors="surrogateescape")
    cols, done = header(classes), {}
    why = "it is empty" if not data else ""
    try:
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(text, newline="")))
            if (rows and rows[0] != cols) or (not rows and not ",".join(cols).startswith(cut)):
                why = (f"its columns are {(rows or [[cut]])[0][:6]}..., this model writes "
                       f"{cols[:6]}... (another model's output?)")
            for n, row in enumerate(rows[1:] if not why else (), start=2):
                if len(row) != len(cols):
                    raise ValueError(f"line {n} has {len(row)} columns, not {len(cols)}")
                done[row[0]] = row[-1]
        else:
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    row = load_json(line, 4)
                    if set(row["probabilities"]) != set(classes):
                        raise ValueError(f"line {n} holds the classes "
                                         f"{sorted(row['probabilities'])}, this model "
                                         f"{sorted(classes)} (another model's output?)")
                    done[str(row["path"])] = str(row["content_hash"])
            if not text.strip() and cut and not cut.startswith('{"path": '):
                why = "its first line is not a row of predictions"
    except (KeyError, TypeError, ValueError, AttributeError, csv.Error) as e:
        why = str(e)
    if why and data:
        raise DataError(f"{out}: cannot resume from this file: not a headstart predict "
                        f"output of this model ({why}); the file is untouched")
    return done, end


def _locked(out: Path) -> int:
    """A descriptor of ``out`` (created if missing, never truncated here) under an
    exclusive advisory lock: one writer per output file at a time.

    Raises:
        DataError: another process holds the lock.
        PathError: ``out`` is not a regular file that can be opened for writing.
    """
    flags = (os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    for _ in range(5):
        try:
            fd = os.open(out, flags, 0o666)
        except OSError as e:
            raise PathError(f"output: {out}: {e.strerror or e}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for a FIFO or a device since the check
            os.close(fd)
            raise PathError(f"output: {out}: not a regular file; give a file to write")
        if not _lock(fd):
            os.close(fd)
            raise DataError(f"{out} is being written by another headstart process; wait "
                            "for it to finish, or write to another file")
        try:
            now = os.stat(out)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                return fd
        except OSError:
            pass
        os.close(fd)  # replaced by a writer that just finished: lock the new file
    raise DataError(f"{out} keeps being replaced by another process; write to another file")


def _lock(fd: int) -> bool:
    """An exclusive advisory lock on ``fd`` without waiting (True where locks are not
    available: Windows)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks
        return True
    return True


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 22, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


class Output:
    """An output file held by one writer (see :func:`open_output`): ``writer`` appends
    rows; ``done`` maps the paths of the rows already in the file to their content hash."""

    def __init__(self, path: Path, fd: int, fmt: str, writer: "Writer",
                 done: dict[str, str]) -> None:
        self.path, self.fd, self.fmt, self.writer, self.done = path, fd, fmt, writer, done
        self.superseded = 0

    def supersede(self, paths: Iterable[str | os.PathLike]) -> None:
        """``paths`` get new rows: their old rows are dropped when the run ends."""
        for p in paths:
            if self.done.pop(str(p), None) is not None:
                self.superseded += 1

    def compact(self) -> None:
        """Rewrite the file with only the last row of each path, atomically (a temporary
        file beside it, then a rename: a reader or a kill sees the old file or the new)."""
        text = _read_all(self.fd).decode("utf-8", errors="surrogateescape")
        if self.fmt == "csv":
            rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
            last = {r[0]: i for i, r in enumerate(rows)}
            buf = io.StringIO(newline="")
            csv.writer(buf).writerows(r for i, r in enumerate(rows) if i == 0 or last[r[0]] == i)
            kept = buf.getvalue()
        else:
            lines = [line for line in text.splitlines() if line.strip()]
            paths = [load_json(line, 4)["path"] for line in lines]
            last = {p: i for i, p in enumerate(paths)}
            kept = "".join(line + "\n" for i, line in enumerate(lines) if last[paths[i]] == i)
        tmp = self.path.with_name(f".{self.path.name}.compact-{os.getpid()}")
        try:
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
                f.write(kept)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, stat.S_IMODE(os.fstat(self.fd).st_mode))
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def open_output(out: str | os.PathLike, fmt: str, classes: list[str], resume: bool
                ) -> Iterator[Output]:
    """The output file ``out`` for a model of ``classes``, checked (a regular file or
    nothing yet, never a FIFO, a device or a folder) and locked for this writer. Resuming,
    its rows are checked to be this model's (else :class:`DataError`, the file untouched)
    and a last line cut by a kill is dropped; otherwise it is emptied. When the block ends
    without error and some images got new rows, their old rows are removed: one row per
    image.

    Raises:
        PathError: ``out`` cannot be written.
        DataError: another process writes it, or it cannot be resumed from.
    """
    out = check_output(out, "output")
    fd = _locked(out)
    try:
        done: dict[str, str] = {}
        try:
            if resume:
                data = _read_all(fd)
                done, end = _complete(data, fmt, classes, out)
                if end < len(data):
                    os.ftruncate(fd, end)
            else:
                os.ftruncate(fd, 0)
            fh = open(fd, "a", newline="", encoding="utf-8", errors="surrogateescape",
                      closefd=False)
        except OSError as e:  # a file that refuses reads or writes, such as /proc/version
            raise PathError(f"output: {out}: {e.strerror or e}") from None
        with fh:
            output = Output(out, fd, fmt, Writer(fh, fmt, classes, os.fstat(fd).st_size == 0,
                                                 str(out)), done)
            yield output
            output.writer.flush()
        if output.superseded:
            output.compact()
    finally:
        os.close(fd)


class Writer:
    """Rows to a CSV or JSON-lines file (see :func:`predict_stream` for the columns)."""

    def __init__(self, fh: TextIO, fmt: str, classes: list[str], with_header: bool,
                 name: str = "") -> None:
        self.fh, self.fmt, self.classes, self.name = fh, fmt, classes, name
        self.csv = csv.writer(fh) if fmt == "csv" else None
        if with_header and self.csv is not None:
            self.csv.writerow(header(classes))

    def row(self, record: dict[str, Any], digest: str) -> None:
        """One prediction record (:meth:`Predictions.record`) and its image's content hash."""
        if self.csv is not None:
            self.csv.writerow([record["path"], record["label"], f"{record['probability']:.6f}"]
                              + [f"{record['probabilities'][c]:.6f}" for c in self.classes]
                              + [int(record["unknown"]), digest])
        else:
            self.fh.write(json.dumps({**record, "content_hash": digest},
                                     ensure_ascii=False) + "\n")

    def rows(self, pred: Predictions, digests: dict[str, str | None]) -> None:
        try:
            for i, src in enumerate(pred.sources):
                self.row(pred.record(i), digests.get(src) or "")
        except OSError as e:
            raise OSError(e.errno, f"cannot write: {e.strerror or e}", self.name) from None
        self.flush()

    def flush(self) -> None:
        """Write what is buffered and fsync it.

        Raises:
            OSError: naming the file (a full disk, a file that refuses writes).
        """
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as e:
            raise OSError(e.errno, f"cannot write: {e.strerror or e}", self.name) from None


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
        raise DataError(param="chunk", expected=">= 1", got=chunk)
    paths = existing(paths)
    result = StreamResult()
    counts = dict.fromkeys(clf.classes_, 0)
    with open_output(out, fmt, list(clf.classes_), resume) as output:
        for files in chunks(iter_images(paths), chunk, result.skipped):
            todo = pending(files, output.done)
            result.resumed += len(files) - len(todo)
            if not todo:
                continue
            output.supersede(todo)
            pred = clf.predict_images(todo)
            digests = {str(f): facts.digest for f, facts in zip(todo, pred.facts or [])}
            output.writer.rows(pred, digests)
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
