"""The studio's tray of unlabelled images: ``PROJECT/unlabelled/`` (a flat folder).

Images dropped there take part in training (``train --unlabelled``) when the page asks;
after training the tray is ordered by "label these next" (:func:`headstart.insight.suggest`)
with the model's guess on each image; one click (or a digit key) files an image under a
class, and confident guesses can be filed in bulk after the user has seen the list, with
an undo. Every name the browser sends is a file name checked to be a regular file directly
inside ``unlabelled/`` (:func:`headstart.io.files.inside`), and every class a real class
folder inside ``data/``; an image sent back from a class must be an image inside ``data/``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, UploadFile
from fastapi.responses import Response

from ..errors import DataError, PathError
from ..io.decode import thumbnail_jpeg
from ..io.files import inside, move_new
from ..io.walk import IMAGE_EXTENSIONS
from .project import Project, free_path, upload_name, upload_refusal

__all__ = ["Tray", "tray_routes"]


class Tray:
    """The unlabelled images of ``project`` (``project.root / "unlabelled"``)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.folder = project.root / "unlabelled"
        self.folder.mkdir(exist_ok=True)
        self.order: dict[str, Any] = {}  # the last "label these next", by run

    def images(self) -> list[str]:
        return sorted(f.name for f in self.folder.iterdir() if f.is_file() and
                      not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS)

    def file(self, name: str) -> Path:
        """The image ``name``: a regular file directly in the tray.

        Raises:
            PathError: anything else (a path, a link out, a folder, a NUL byte).
        """
        path = inside(self.folder, name, "unlabelled image", "file")
        if path.parent != self.folder:
            raise PathError(f"unlabelled image: {name!r} is not in the tray")
        return path

    def add(self, filename: str, data: bytes) -> dict[str, Any]:
        """Save an upload under a safe, free name if it decodes: ``{"saved": name}`` or
        ``{"refused": reason}``."""
        refused = upload_refusal(data)
        if refused:
            return {"refused": refused}
        target = free_path(self.folder, upload_name(filename))
        target.write_bytes(data)
        return {"saved": target.name}

    def file_under(self, name: str, cls: str) -> str:
        """Move tray image ``name`` into class ``cls``; its new path relative to data."""
        rel = self.project.move_into(self.file(name), cls)
        self.project.forget_digests()
        return rel

    def give_back(self, rel: str) -> str:
        """Move image ``rel`` of ``data`` back to the tray (the undo of a filing)."""
        src = self.project.inside(rel)
        target = free_path(self.folder, src.name)
        move_new(src, target)
        self.project.forget_digests()
        return target.name

    def ranked(self, run: str | None, n: int = 20) -> dict[str, Any]:
        """Every tray image with the current model's guess, "label these next" first (see
        :func:`headstart.insight.suggest.suggest`), then the rest by how unsure the model
        is, then those like no class."""
        from ..fit.classifier import Classifier
        from ..insight.suggest import suggest

        names = self.images()
        if run is None or not names:
            return {"run": run, "images": [{"name": x} for x in names], "ordered": False}
        clf = Classifier.load(self.project.run_dir(run))
        s = suggest(clf, [self.folder / x for x in names], n=n)
        rank = {Path(x.path).name: (i + 1, x.why) for i, x in enumerate(s.label_next)}
        pred = s.predictions
        rejected = pred.rejected if pred.rejected is not None else [False] * len(pred.proba)
        rows = []
        for src, p, unlike in zip(pred.sources, pred.proba, rejected):
            r = rank.get(Path(src).name)
            rows.append({"name": Path(src).name, "guess": pred.classes[int(p.argmax())],
                         "probability": float(p.max()), "rank": r[0] if r else None,
                         "why": r[1] if r else "like none of the classes" if unlike else "",
                         "unlike": bool(unlike)})
        rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["unlike"],
                                 -r["probability"]))
        return {"run": run, "images": rows, "ordered": True}


def tray_routes(app: FastAPI, project: Project) -> Tray:
    """The tray's endpoints (see the module docstring)."""
    tray = Tray(project)

    @app.get("/api/unlabelled")
    async def listing(order: bool = False) -> dict[str, Any]:
        if not order:
            return {"images": [{"name": x} for x in tray.images()], "ordered": False}
        return await asyncio.to_thread(tray.ranked, project.current())

    @app.post("/api/unlabelled")
    async def upload(files: list[UploadFile] = File(...)) -> dict[str, Any]:
        results = []
        for f in files:
            r = await asyncio.to_thread(tray.add, f.filename or "", await f.read())
            results.append({"filename": f.filename, **r})
        return {"results": results}

    @app.get("/api/unlabelled/thumb")
    async def thumb(name: str) -> Response:
        data = await asyncio.to_thread(thumbnail_jpeg, tray.file(name), 160)
        if data is None:
            raise DataError(f"unlabelled image: {name!r} cannot be read")
        return Response(data, media_type="image/jpeg")

    @app.post("/api/unlabelled/file")
    async def file_under(body: dict[str, Any]) -> dict[str, Any]:
        """File images under classes: ``{"items": [{"name", "to"}]}``; each checked before
        any is moved. Returns the new paths (for an undo)."""
        items = body.get("items")
        if not isinstance(items, list) or not items or len(items) > 10_000:
            raise DataError("items: expected a list of {name, to}")
        for it in items:
            if not isinstance(it, dict):
                raise DataError("items: expected a list of {name, to}")
            tray.file(str(it.get("name", ""))), project.class_dir(str(it.get("to", "")))
        return {"filed": [tray.file_under(str(it["name"]), str(it["to"])) for it in items]}

    @app.post("/api/unlabelled/undo")
    async def undo(body: dict[str, Any]) -> dict[str, Any]:
        paths = body.get("paths")
        if not isinstance(paths, list) or not paths:
            raise DataError("paths: expected a list of images in the project's classes")
        for p in paths:
            project.inside(str(p))
        return {"back": [tray.give_back(str(p)) for p in paths]}
    return tray
