"""The studio's project folder and training runs (the web app is :mod:`headstart.studio.app`).

A project is a plain folder the CLI understands too: ``PROJECT/data/<class>/<images>``,
``PROJECT/models/<run>/`` (model directories), ``PROJECT/studio.json`` (the current run)
and ``PROJECT/_trash/`` (deleted classes and images: never removed from disk). Names from
the browser are reduced to safe names (:func:`safe_name`) and paths checked to lie inside
``data`` (:meth:`Project.inside`). Training runs in a worker process
(:mod:`headstart.studio.worker`), one at a time (:class:`Trainer`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import defaults
from ..io.files import (FileProblem, clip_name, digest_bytes, inside, load_json, move_new,
                        read_regular, write_text_atomic)
from ..io.decode import UnreadableImage, check_upload
from ..errors import DataError, PathError
from ..io.walk import IMAGE_EXTENSIONS

__all__ = ["COOKIE", "PAGE", "TOKEN_HEADER", "Project", "Trainer", "safe_name",
           "zip_run"]

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("studio.html")
COOKIE = "headstart_token"
TOKEN_HEADER = "x-headstart-token"
# a name from the browser, in encoded bytes: room left for "-12" and a trash time stamp
MAX_NAME_BYTES = 200


def safe_name(name: str, what: str = "name") -> str:
    """A file or class name from the browser reduced to letters, digits, ``-_. `` (no
    path separators, no leading dot or underscore: never hidden, never ``_trash``), at
    most :data:`MAX_NAME_BYTES` encoded bytes (its suffix kept).

    Raises:
        DataError: nothing usable is left.
    """
    base = re.sub(r"[^\w\-. ]+", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    base = base.lstrip("._ ")
    if not base or base in (".", ".."):
        raise DataError(f"{what}: {name!r} has no usable characters")
    return clip_name(base, MAX_NAME_BYTES)


def _run_record(run: str, meta: Any, s: dict[str, Any]) -> dict[str, Any]:
    """What the run table shows of one run: its accuracy with a 95% interval, its settings
    and its images per class."""
    from ..insight.evaluate import wilson_ci

    acc, n = s.get("val_accuracy"), s.get("val_images")
    if not isinstance(acc, (int, float)) or acc != acc:  # none, or not a number (NaN)
        acc = None
    ok = acc is not None and isinstance(n, int) and n > 0
    ft = s.get("finetune") if isinstance(s.get("finetune"), dict) else {}
    cfg = ft.get("config") if isinstance(ft.get("config"), dict) else {}
    return {"id": run, "val_accuracy": acc, "val_images": n,
            "val_ci95": list(wilson_ci(round(acc * n), n)) if ok else None,
            "val_source": s.get("val_source"),
            "head": s.get("head"), "trained_at": s.get("trained_at"),
            "backbone": s.get("backbone"), "finetune": bool(ft.get("ran")),
            "finetune_mode": ft.get("mode", "off"), "finetune_kept": ft.get("kept"),
            "augment": cfg.get("augment") if ft.get("ran") else None,
            "epochs": ft.get("epochs") if ft.get("ran") else None,
            "int8": bool(meta.get("int8")) if isinstance(meta, dict) else False,
            "counts": s.get("train_counts") if isinstance(s.get("train_counts"), dict) else {}}


def _verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Which of two runs measured better, said no more firmly than their intervals allow."""
    if a["val_accuracy"] is None or b["val_accuracy"] is None:
        return "cannot compare: a run has no measured accuracy (too few held-out images)"
    diff = 100 * (a["val_accuracy"] - b["val_accuracy"])
    better, worse = (a, b) if diff > 0 else (b, a)
    same = ("" if a.get("val_images") == b.get("val_images") else
            f" (measured on different numbers of held-out images: {a.get('val_images')} "
            f"and {b.get('val_images')})")
    if abs(diff) < 0.05:
        return f"the same measured accuracy{same}"
    lo_b, hi_w = better["val_ci95"][0], worse["val_ci95"][1]
    if lo_b > hi_w:
        return (f"{better['id']} is better by {abs(diff):.1f} points: the 95% intervals do "
                f"not overlap{same}")
    return (f"{better['id']} measured {abs(diff):.1f} points higher, but the 95% intervals "
            f"overlap: with this many held-out images the difference may be chance{same}")


def free_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name-1``, ``name-2``... when taken."""
    stem, ext = os.path.splitext(name)
    target, n = folder / name, 0
    while os.path.lexists(target):
        n += 1
        target = folder / f"{stem}-{n}{ext}"
    return target


def upload_name(filename: str) -> str:
    """An uploaded file's name made safe (:func:`safe_name`), with an image suffix."""
    name = safe_name(filename or "image.jpg", "filename")
    stem, ext = os.path.splitext(name)
    return name if ext.lower() in IMAGE_EXTENSIONS else f"{stem}.jpg"


def upload_refusal(data: bytes, max_pixels: int = defaults.MAX_PIXELS) -> str | None:
    """Why uploaded bytes cannot be kept (empty, not an image, too many pixels, cannot be
    decoded), or None."""
    try:
        check_upload(data, max_pixels, decode=True)
    except UnreadableImage as e:
        return str(e)
    return None


class Project:
    """A studio project folder (see the module docstring); created if missing."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        if self.root.is_dir() and not (self.root / "data").is_dir() and any(
                d.is_dir() and not d.name.startswith((".", "_")) and d.name != "models"
                and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())
                for d in self.root.iterdir()):
            raise DataError(f"{root} holds class folders, not a studio project: open a new "
                            f"project with them copied in: headstart studio PROJECT "
                            f"--import {root}")
        self.data, self.models, self.trash = (self.root / "data", self.root / "models",
                                              self.root / "_trash")
        for folder in (self.data, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        self.settings_file = self.root / "studio.json"
        if not self.settings_file.exists():
            self.save_settings({"current": None})
        self.lock = threading.Lock()
        self._digests: dict[str, str] | None = None

    def import_classes(self, source: str | os.PathLike) -> list[str]:
        """Copy the class folders of ``source`` (never moved) into ``data``; files whose
        names are taken get a suffix. Returns the classes imported."""
        src = Path(source)
        if not src.is_dir():
            raise DataError(f"import: {source} is not a folder")
        names = []
        for d in sorted(src.iterdir()):
            if d.is_dir() and not d.name.startswith((".", "_")):
                dest = self.data / self.add_class(d.name)
                for f in sorted(d.iterdir()):
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                        shutil.copy2(f, free_path(dest, f.name))
                names.append(dest.name)
        self.forget_digests()
        return names

    # ------------------------------------------------------------ settings and runs
    def settings(self) -> dict[str, Any]:
        try:
            s = load_json(read_regular(self.settings_file, 1 << 20))
            return s if isinstance(s, dict) else {}
        except (FileProblem, ValueError):
            return {}

    def save_settings(self, s: dict[str, Any]) -> None:
        write_text_atomic(self.settings_file, json.dumps(s, indent=1) + "\n")

    def runs(self) -> list[dict[str, Any]]:
        """Model directories under ``models/``, newest first, with their figures."""
        out = []
        for d in sorted(self.models.iterdir(), reverse=True):
            try:
                meta = load_json(read_regular(self._meta(d.name), 16 << 20))
                s = meta.get("summary", {}) if isinstance(meta, dict) else {}
                s = s if isinstance(s, dict) else {}
            except (PathError, FileProblem, ValueError):
                continue
            out.append(_run_record(d.name, meta, s))
        return out

    def current(self, runs: list[dict[str, Any]] | None = None) -> str | None:
        """The current run: the one chosen, else the newest (``runs``: :meth:`runs`, if
        already read)."""
        ids = [r["id"] for r in (self.runs() if runs is None else runs)]
        cur = self.settings().get("current")
        return cur if cur in ids else (ids[0] if ids else None)

    def set_current(self, run: str) -> None:
        s = self.settings()
        s["current"] = run
        self.save_settings(s)

    def _meta(self, run: str) -> Path:
        """``models/<run>/headstart.json``, both checked to stay inside ``models``."""
        d = inside(self.models, run, "run", "folder")
        return inside(d, "headstart.json", "run", "file")

    def run_dir(self, run: str) -> Path:
        """The model directory of ``run`` (inside ``models``, no link out).

        Raises:
            DataError: no such run.
        """
        try:
            return self._meta(safe_name(run, "run")).parent
        except PathError:
            raise DataError(f"run: no model {run!r} in this project") from None

    def run_file(self, run: str, name: str) -> Path | None:
        """The regular file ``name`` of ``run``, inside its folder (a link out is
        refused), or None when it is not there.

        Raises:
            PathError: it is a link out of the run's folder, a folder or not a file.
        """
        d = self.run_dir(run)
        if not os.path.lexists(d / name):
            return None
        return inside(d, name, "file", "file")

    def run_entry(self, run: str, name: str) -> Path | None:
        """The file or folder ``name`` of ``run`` (an export), inside its folder, or None
        when it is not there.

        Raises:
            PathError: it is a link out of the run's folder, or neither a file nor a folder.
        """
        d = self.run_dir(run)
        if not os.path.lexists(d / name):
            return None
        return inside(d, name, "file", "folder" if (d / name).is_dir() else "file")

    def confusion(self, run: str) -> dict[str, Any]:
        """The run's confusion matrix on its held-out images, with each cell's images:
        ``classes``, ``matrix`` ``[true][predicted]`` counts, ``cells`` ``[true][predicted]``
        lists of ``{"path", "probability", "unknown"}`` for the images still where they
        were (``path`` relative to ``data``; a path in ``metrics.json`` that leads outside
        ``data`` is never used), and ``gone``: how many were moved or removed since.

        Raises:
            DataError: no such run, or it measured nothing (no held-out images).
        """
        m = self.metrics(run)
        if m is None or not isinstance(m.get("images"), list):
            raise DataError(f"run {run}: no held-out predictions to show (nothing was held "
                            "out, or the run predates them)")
        classes = [str(c) for c in m.get("classes", [])]
        index = {c: i for i, c in enumerate(classes)}
        k = len(classes)
        matrix = [[0] * k for _ in range(k)]
        cells: list[list[list[dict[str, Any]]]] = [[[] for _ in range(k)] for _ in range(k)]
        gone = 0
        for row in m["images"]:
            if not isinstance(row, dict):
                continue
            i, j = index.get(row.get("label")), index.get(row.get("predicted"))
            if i is None or j is None:
                continue
            matrix[i][j] += 1
            rel = self._data_rel(row.get("path"))
            if rel is None:
                gone += 1
                continue
            cells[i][j].append({"path": rel, "probability": row.get("probability"),
                                "unknown": bool(row.get("unknown"))})
        return {"run": run, "classes": classes, "matrix": matrix, "cells": cells,
                "gone": gone}

    def metrics(self, run: str) -> dict[str, Any] | None:
        """The run's ``metrics.json`` (its held-out figures), or None when it has none."""
        path = self.run_file(run, "metrics.json")
        try:
            m = load_json(read_regular(path, 64 << 20)) if path is not None else None
        except (FileProblem, ValueError):
            return None
        return m if isinstance(m, dict) else None

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Runs ``a`` and ``b`` side by side: each run's record (see :meth:`runs`) with its
        per-class ``recall`` and interval, and a ``verdict`` in words.

        Raises:
            DataError: either run does not exist.
        """
        records = {r["id"]: r for r in self.runs()}
        out = []
        for run in (a, b):
            self.run_dir(run)  # it exists, inside models
            if run not in records:
                raise DataError(f"run: {run!r} cannot be read")
            m = self.metrics(run) or {}
            per = m.get("per_class") if isinstance(m.get("per_class"), dict) else {}
            out.append({**records[run], "recall": {
                c: {"recall": v.get("recall"), "ci95": v.get("recall_ci95"),
                    "support": v.get("support")}
                for c, v in per.items() if isinstance(v, dict)}})
        return {"runs": out, "verdict": _verdict(*out)}

    def _data_rel(self, path: Any) -> str | None:
        """``path`` (from a model file) as ``<class>/<file>`` relative to ``data`` when it
        is an image there now, else None (outside ``data``, moved, not a file)."""
        if not isinstance(path, str) or not path:
            return None
        try:
            rel = Path(os.path.normpath(path)).relative_to(self.data).as_posix()
            self.inside(rel)
        except (ValueError, PathError):
            return None
        return rel

    # ------------------------------------------------------------ classes and images
    def inside(self, rel: str) -> Path:
        """The image ``rel`` (``<class>/<file>``, relative to ``data``): a regular file in a
        class folder, checked to stay inside ``data`` (see :func:`headstart.io.files.inside`).

        Raises:
            PathError: anything else (a class folder, a link out, a NUL byte...).
        """
        path = inside(self.data, rel, "image", "file")
        if path.parent.parent != self.data or path.parent.name.startswith((".", "_")):
            raise PathError(f"image: {rel!r} is not an image in a class folder")
        return path

    def class_dir(self, name: str) -> Path:
        """The folder of class ``name`` (a safe name), inside ``data``.

        Raises:
            DataError: there is no such class (or it leads outside ``data``).
        """
        try:
            return inside(self.data, safe_name(name, "class"), "class", "folder")
        except PathError:
            raise DataError(f"class: no class {name!r}") from None

    def classes(self) -> list[dict[str, Any]]:
        return [{"name": d.name, "images": sum(1 for f in d.iterdir() if f.is_file() and
                                               f.suffix.lower() in IMAGE_EXTENSIONS)}
                for d in sorted(self.data.iterdir()) if d.is_dir() and
                not d.name.startswith((".", "_"))]

    def snapshot(self, run: str) -> tuple[Path, dict[str, int]]:
        """The images there now, as ``.snapshots/<run>.csv`` (``path,label``, the paths
        as the report and the health check show them) and the count per class.

        Raises:
            DataError: fewer than 2 classes have images.
        """
        counts = {c["name"]: c["images"] for c in self.classes()}
        with_images = [c for c, n in counts.items() if n]
        if len(with_images) < 2:
            have = ", ".join(f"{c} {n}" for c, n in counts.items()) or "no classes yet"
            raise DataError(f"add images to at least 2 classes first (now: {have})")
        folder = self.root / SNAPSHOTS
        folder.mkdir(exist_ok=True)
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["path", "label"])
        w.writerows([str(self.data / rel), c] for c in with_images for rel in self.images(c)
                    if Path(rel).suffix.lower() in IMAGE_EXTENSIONS)
        out = inside(folder, f"{safe_name(run, 'run')}.csv", "snapshot", "absent")
        write_text_atomic(out, text.getvalue())
        return out, {c: counts[c] for c in with_images}

    def images(self, cls: str) -> list[str]:
        d = self.class_dir(cls)
        return [f"{d.name}/{f.name}" for f in sorted(d.iterdir())
                if f.is_file() and not f.name.startswith(".")]

    def add_class(self, name: str) -> str:
        name = safe_name(name, "class")
        (self.data / name).mkdir(exist_ok=True)
        return name

    def rename_class(self, old: str, new: str) -> str:
        """Rename ``old`` to ``new``; into an existing class, a merge (names that clash get
        a suffix, nothing is overwritten)."""
        src, new = self.class_dir(old), safe_name(new, "class")
        if not os.path.lexists(self.data / new):
            move_new(src, self.data / new)
            return new
        dest = self.class_dir(new)
        if dest == src:
            return new
        for f in sorted(src.iterdir()):
            move_new(f, free_path(dest, f.name))
        src.rmdir()
        return new

    def delete_class(self, name: str) -> None:
        src = self.class_dir(name)
        self.trash.mkdir(exist_ok=True)
        move_new(src, free_path(self.trash, f"{src.name}-{time.strftime('%Y%m%d-%H%M%S')}"))

    def delete_image(self, rel: str) -> None:
        src = self.inside(rel)
        folder = self.trash / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        move_new(src, free_path(folder, src.name))

    def move_image(self, rel: str, to: str) -> str:
        return self.move_into(self.inside(rel), to)

    def move_into(self, src: Path, to: str) -> str:
        """Move the file ``src`` (a path the caller has checked) into class ``to`` under a
        free name (a merge never overwrites); its path relative to ``data``."""
        dest = self.class_dir(to)
        if dest == src.parent:
            return f"{dest.name}/{src.name}"
        target = free_path(dest, src.name)
        move_new(src, target)
        return f"{dest.name}/{target.name}"

    def forget_digests(self) -> None:
        """Images came or went other than through :meth:`add_image`: hash them again when
        next needed."""
        self._digests = None

    def add_image(self, cls: str, filename: str, data: bytes,
                  max_pixels: int = defaults.MAX_PIXELS) -> dict[str, Any]:
        """Save an uploaded image into class ``cls`` under a safe, free name, if the
        library can decode it: ``{"saved": rel, "duplicate_of": rel or None}``, or
        ``{"refused": reason}``."""
        folder, name = self.class_dir(cls), upload_name(filename)
        refused = upload_refusal(data, max_pixels)
        if refused:
            return {"refused": refused}
        digest = digest_bytes(data)
        with self.lock:
            known = self.digests()
            target = free_path(folder, name)
            target.write_bytes(data)
            rel = f"{folder.name}/{target.name}"
            duplicate = known.get(digest)
            known.setdefault(digest, rel)
        return {"saved": rel, "duplicate_of": duplicate}

    def digests(self) -> dict[str, str]:
        """Content hash -> first file with it (computed once, kept up to date by uploads)."""
        if self._digests is None:
            self._digests = {}
            for d in self.data.iterdir():
                if d.is_dir():
                    for f in sorted(d.iterdir()):
                        try:
                            data = read_regular(f, 64 * 2 ** 20)
                        except FileProblem:  # not a regular file, too large, unreadable
                            continue
                        self._digests.setdefault(digest_bytes(data), f"{d.name}/{f.name}")
        return self._digests


MIN_PER_CLASS = 2   # images per class to hold some out and measure accuracy
GOOD_PER_CLASS = 5  # fewer: the class "needs more"
SNAPSHOTS = ".snapshots"


class Trainer:
    """One training run at a time in a worker process; its progress as a list of events and
    as one :meth:`progress` record (stage, fraction, ETA) that a reloaded page reads."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.proc: subprocess.Popen | None = None
        self.events: list[dict[str, Any]] = []
        self.run: str | None = None
        self.state = "idle"
        self.started = 0.0
        self.images: dict[str, int] = {}
        self.max_epochs = defaults.EPOCHS

    def start(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Start a run on the images there now (a snapshot: images added during the run
        go into the next one); ``{"run", "images" {class: n}, "advice"}``.

        Raises:
            DataError: a run is in progress, or the images cannot make a model.
        """
        if self.proc is not None and self.proc.poll() is None:
            if self.state == "running":
                raise DataError("a training run is already in progress (cancel it first)")
            self.proc.kill()  # finished (its model is saved) but still tearing down
            self.proc.wait()
        run = time.strftime("%Y%m%d-%H%M%S")
        while (self.project.models / run).exists():
            run += "x"
        snapshot, counts = self.project.snapshot(run)
        self.run, self.events, self.state = run, [{"stage": "start", "run": run}], "running"
        self.started, self.images = time.time(), counts
        self.max_epochs = int(settings.get("epochs") or defaults.EPOCHS)
        cmd = [sys.executable, "-m", "headstart.studio.worker", str(self.project.root), run]
        log = inside(snapshot.parent, f"{run}.log", "log", "absent")
        with open(log, "wb") as err:  # the worker's warnings and any traceback
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({**settings, "snapshot": str(snapshot)}))
        self.proc.stdin.close()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return {"run": run, "images": counts, "advice": advice(counts)}

    def progress(self) -> dict[str, Any]:
        """What the run is doing: ``state``, ``run``, ``stage`` (words), ``fraction`` (0-1 or
        None), ``eta_s`` (None when unknown), ``elapsed_s``, ``images`` and, when it ended
        in an error, ``message``."""
        elapsed = time.time() - self.started if self.started else 0.0
        out: dict[str, Any] = {"state": self.state, "run": self.run, "stage": "",
                               "fraction": None, "eta_s": None, "eta_is_bound": False,
                               "elapsed_s": elapsed,
                               "images": self.images}
        out["epochs"] = self.epochs()
        for e in reversed(self.events):
            kind = e.get("stage")
            if kind == "features" and e.get("total"):
                frac = e["done"] / e["total"]
                out.update(stage=f"reading images {e['done']} of {e['total']}", fraction=frac)
                if 0 < frac < 1:
                    out["eta_s"] = elapsed * (1 - frac) / frac
            elif kind == "epoch":  # early stopping may end it sooner: a bound, said so
                n, most = int(e.get("epoch") or 0), self.max_epochs
                out.update(stage=f"fine-tuning, epoch {n} of at most {most}",
                           fraction=min(1.0, n / most), eta_is_bound=True,
                           eta_s=float(e.get("seconds") or 0) / n * max(0, most - n)
                           if n else None)
            elif kind in ("begin", "end"):
                out["stage"] = STAGE_WORDS.get(str(e.get("name")), str(e.get("name")))
            elif kind in ("error", "cancelled", "done"):
                out.update(stage=kind, fraction=1.0 if kind == "done" else None,
                           message=e.get("message"))
            else:
                continue
            break
        return out

    def epochs(self) -> list[dict[str, Any]]:
        """The figures of each epoch of the run's last training stage (fine-tuning or
        from scratch): ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``,
        ``val_accuracy``, ``seconds`` (a value not measured is None)."""
        rows: list[dict[str, Any]] = []
        for e in self.events:
            if e.get("stage") == "begin" and e.get("name") in ("finetune", "scratch"):
                rows = []  # a new training stage: its own epochs
            elif e.get("stage") == "epoch":
                rows.append({k: _number(e.get(k)) for k in EPOCH_KEYS})
        return rows

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("stage") == "done" and self.run:  # current before anyone hears
                self.project.set_current(self.run)
            self.events.append(event)
            if event.get("stage") in ("done", "error"):
                self.state = event["stage"]
        code = proc.wait()
        if self.state == "running":
            self.state = "cancelled" if code < 0 else "error"
            self.events.append({"stage": self.state, "message": f"worker exited ({code})"})

    def cancel(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.state = "cancelled"
        self.proc.kill()
        self.proc.wait()
        return True


EPOCH_KEYS = ("epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
              "seconds")


def _number(x: Any) -> float | None:
    """A finite number from an event, else None (JSON has no NaN)."""
    return float(x) if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") \
        else None


STAGE_WORDS = {"read_data": "reading images", "fit_head": "fitting the classifier",
               "calibrate": "calibrating the probabilities", "finetune": "fine-tuning",
               "quantize": "quantising to INT8", "scratch": "training from scratch",
               "unlabelled": "learning from the unlabelled images"}


def advice(counts: dict[str, int]) -> str | None:
    """What to add before accuracy can be measured well, or None."""
    few = sorted(c for c, n in counts.items() if n < GOOD_PER_CLASS)
    if not few:
        return None
    if any(counts[c] < MIN_PER_CLASS for c in few):
        return (f"accuracy cannot be measured with fewer than {MIN_PER_CLASS} images in a "
                f"class; add at least {GOOD_PER_CLASS} to {', '.join(few)}")
    return f"add more images to {', '.join(few)} ({GOOD_PER_CLASS} or more each) for a " \
           "steadier model and a measured accuracy you can trust"


def zip_run(run_dir: Path, names: list[str] | None = None) -> bytes:
    """The model directory (or only its entries ``names``: files, or export folders with
    everything in them) as the bytes of a zip; a file that is a link out of the folder, or
    not a regular file, is left out, and links to folders are not followed."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(run_dir.rglob("*")):
            rel = f.relative_to(run_dir)
            if names is not None and rel.parts[0] not in names:
                continue
            if f.is_dir() and not f.is_symlink():
                continue
            try:
                data = read_regular(inside(run_dir, rel, "file", "file"))
            except (PathError, FileProblem) as e:
                logger.warning("not zipped: %s (%s)", f, e)
                continue
            z.writestr(f"{run_dir.name}/{rel.as_posix()}", data)
    return buf.getvalue()
