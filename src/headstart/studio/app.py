"""The studio: the whole loop (collect, label, check, train, review, try, export) in a
local web app over the same library.

A project is a plain folder the CLI understands too: ``PROJECT/data/<class>/<images>``,
``PROJECT/models/<run>/`` (model directories), ``PROJECT/studio.json`` (the current run)
and ``PROJECT/_trash/`` (deleted classes and images: never removed
from disk). :func:`create_studio_app` serves it; :func:`headstart.studio.start.studio` runs
it on uvicorn, behind the start page of recent projects.

Security: a request whose ``Host`` is not a name the studio serves on (``127.0.0.1``,
``localhost``, ``::1``, the ``host`` it listens on, and the names given in
``allow_hosts`` for a LAN set-up) is refused (403), so a web page that rebinds its own
name to 127.0.0.1 reaches nothing; so is one with a foreign ``Origin``. Then every
request needs the per-launch token (``?token=`` on the first page load, which sets a
same-site cookie, or the ``X-Headstart-Token`` header). Uploads have the size, pixel and
body-time limits of ``serve``; file and class names from the browser are reduced to safe
names of at most 200 bytes, never used as paths; every path the browser sends goes through
:func:`headstart.io.files.inside` (resolved, inside the project's ``data``, no symbolic link
out, an image and not a class folder), and so does every file of a run that is served or
zipped (inside its run's folder).

Training runs in a separate process (:mod:`headstart.studio.worker`): the server stays
responsive, one run at a time, cancel kills it (the model directory is written atomically,
so no half model is left), and its progress reaches the page as server-sent events.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .. import defaults
from ..deploy.serve import LimitBody
from ..errors import HeadstartError
from ..io.decode import thumbnail_jpeg
from ..io.files import inside, read_regular
from .project import COOKIE, GOOD_PER_CLASS, PAGE, TOKEN_HEADER, Project, Trainer, zip_run
from .tray import tray_routes

__all__ = ["create_studio_app", "guarded"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _red_square() -> bytes:
    """The thumbnail of a file that cannot be read: a small red square."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("", "0.0.0.0", "::")


def host_name(header: str) -> str:
    """The name of a ``Host`` header, lower case, without its port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(host: str, allow: tuple[str, ...] = ()) -> set[str]:
    """The ``Host`` names the studio answers: loopback, the address it listens on (not a
    wildcard such as ``0.0.0.0``) and ``allow``."""
    names = set(LOOPBACK) | {host_name(h) for h in allow}
    if host_name(host) not in WILDCARDS:
        names.add(host_name(host))
    return names


def _refusal(request: Request, token: str, hosts: set[str], port: int) -> str | None:
    """Why ``request`` is refused (403), or None: a foreign Host, a foreign Origin, or a
    missing or wrong token, checked in that order."""
    name = host_name(request.headers.get("host", ""))
    if name not in hosts:
        return (f"host {name or '(none)'!r} is not this studio's: open it at 127.0.0.1 "
                "or localhost, or start it with --allow-host NAME")
    origin = request.headers.get("origin")
    if origin is not None and origin not in {f"http://{h}:{port}" if ":" not in h else
                                             f"http://[{h}]:{port}" for h in hosts}:
        return f"foreign origin {origin}"
    given = (request.query_params.get("token") or request.headers.get(TOKEN_HEADER)
             or request.cookies.get(COOKIE))
    if given is None or not secrets.compare_digest(given, token):
        return "missing or wrong token: open the address 'headstart studio' printed"
    return None


def guarded(app: FastAPI, token: str, hosts: set[str], port: int,
            body_timeout: float) -> FastAPI:
    """``app`` behind the studio's checks: Host, Origin and token (403 otherwise; the token
    from ``?token=`` is kept in a same-site cookie), serve's body limits, and a
    :class:`HeadstartError` answered as 400 with its message."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        refusal = _refusal(request, token, hosts, port)
        if refusal is not None:
            return JSONResponse({"detail": refusal}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token") == token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    # serve's limit on bodies, declared or not (inside the token check: added after it)
    app.add_middleware(LimitBody, max_bytes=int(defaults.MAX_UPLOAD_MB * 2 ** 20), hint="",
                       body_timeout=body_timeout)

    @app.exception_handler(HeadstartError)
    async def user_error(request: Request, exc: HeadstartError) -> JSONResponse:
        return JSONResponse({"detail": exc.describe(_spelled)}, status_code=400)
    return app


def _routes(project: Project, token: str, host: str, port: int,
            allow_hosts: tuple[str, ...], body_timeout: float) -> Any:
    app = FastAPI(title="headstart studio", docs_url=None, redoc_url=None, openapi_url=None)
    trainer = Trainer(project)
    app.state.trainer = trainer
    guarded(app, token, allowed_hosts(host, allow_hosts), port, body_timeout)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text()

    _project_routes(app, project, trainer)
    _image_routes(app, project)
    _train_routes(app, trainer)
    _run_routes(app, project)
    _compare_routes(app, project)
    _export_routes(app, project)
    _review_routes(app, project)
    tray_routes(app, project)
    return app


def _spelled(param: str) -> str:
    """A library parameter as the page names it."""
    return {"head": "Head", "finetune": "Fine-tune", "int8": "INT8", "fmt": "format",
            "epochs": "Epochs", "augment": "Augmentation"}.get(
        param, param)


def _options() -> dict[str, Any]:
    """The choices the page offers, from the registries: head kinds and export formats
    (each with its help line), and whether INT8 can run here."""
    from ..backbone.runtime import int8_missing
    from ..deploy.export import EXPORT_FORMATS
    from ..heads import HEAD_KINDS

    return {"heads": [{"name": h.kind, "help": h.help} for h in HEAD_KINDS],
            "int8": {"unavailable": int8_missing()},
            "exports": [{"name": f.name, "help": f.help, "quantize": list(f.quantize),
                         "unavailable": f.unavailable(), "folder": f.folder,
                         "files": [p.name for p in f.files(Path(f.default_name()))]}
                        for f in EXPORT_FORMATS]}


def _project_routes(app: FastAPI, project: Project, trainer: Trainer) -> None:
    """The project's state and classes."""

    @app.get("/api/project")
    async def info() -> dict[str, Any]:
        runs = project.runs()  # each run's headstart.json read once per call
        current = project.current(runs)
        classes = [{**c, "needs_more": c["images"] < GOOD_PER_CLASS}
                   for c in project.classes()]
        return {"root": str(project.root), "classes": classes, "runs": runs,
                "current": current, "options": _options(), "good_per_class": GOOD_PER_CLASS,
                "training": trainer.progress(),
                "serve": f"headstart serve {project.models / current}" if current else None}

    @app.post("/api/classes")
    async def add_class(body: dict[str, str]) -> dict[str, str]:
        return {"name": project.add_class(body.get("name", ""))}

    @app.post("/api/classes/{name}/rename")
    async def rename(name: str, body: dict[str, str]) -> dict[str, str]:
        return {"name": project.rename_class(name, body.get("to", ""))}

    @app.delete("/api/classes/{name}")
    async def delete_class(name: str) -> dict[str, bool]:
        project.delete_class(name)
        return {"deleted": True}

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        from ..fit.health import check

        if len(project.classes()) < 1:
            return {"summary": "no classes yet", "problems": 0}
        try:
            h = await asyncio.to_thread(check, project.data, near=False)
        except HeadstartError as e:
            return {"summary": e.describe(_spelled), "problems": 1}
        return {**h.to_dict(limit=20), "summary": h.summary(), "problems": h.problems()}


def _image_routes(app: FastAPI, project: Project) -> None:
    """Images of a class: list, upload, move, delete (to the trash), thumbnails."""

    @app.get("/api/classes/{name}/images")
    async def images(name: str) -> dict[str, list[str]]:
        return {"images": project.images(name)}

    @app.post("/api/classes/{name}/images")
    async def upload(name: str, files: list[UploadFile] = File(...)) -> dict[str, Any]:
        results = []
        for f in files:
            data = await f.read()
            r = await asyncio.to_thread(project.add_image, name, f.filename or "", data)
            results.append({"filename": f.filename, **r})
        return {"results": results}

    @app.post("/api/images/move")
    async def move(body: dict[str, str]) -> dict[str, str]:
        return {"path": project.move_image(body.get("path", ""), body.get("to", ""))}

    @app.post("/api/images/delete")
    async def delete_image(body: dict[str, str]) -> dict[str, bool]:
        project.delete_image(body.get("path", ""))
        return {"deleted": True}

    @app.get("/api/thumb")
    async def thumb(path: str) -> Response:
        data = await asyncio.to_thread(thumbnail_jpeg, project.inside(path), 160)
        return Response(data or _red_square(), media_type="image/jpeg")


def _train_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The page's training settings, each checked (a bad one refused before any work):
    ``head``, ``finetune`` (off, auto, all, last-N), ``epochs`` (1-100: at most this many
    fine-tuning epochs), ``augment``, ``int8`` and ``unlabelled`` (learn from the tray's
    images too)."""
    from ..fit.finetune import AUGMENTS, FinetuneConfig, parse_mode

    epochs = body.get("epochs") or FinetuneConfig.max_epochs
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= 100:
        raise HeadstartError(param="epochs", expected="a whole number 1-100", got=epochs)
    augment = str(body.get("augment") or FinetuneConfig.augment)
    if augment not in AUGMENTS:
        raise HeadstartError(param="augment", expected=f"one of {', '.join(AUGMENTS)}",
                             got=augment)
    finetune = str(body.get("finetune", "off"))
    parse_mode(finetune)
    return {"head": str(body.get("head", defaults.HEAD)), "finetune": finetune,
            "epochs": epochs, "augment": augment, "int8": bool(body.get("int8", False)),
            "unlabelled": bool(body.get("unlabelled", False))}


def _train_routes(app: FastAPI, trainer: Trainer) -> None:
    """Start and cancel a training run; its progress as server-sent events."""

    @app.post("/api/train")
    async def train(body: dict[str, Any]) -> dict[str, Any]:
        from ..backbone.runtime import int8_missing
        from ..heads import HEAD_KINDS

        settings = _train_settings(body)
        HEAD_KINDS.get(settings["head"], param="head")  # refused before any work
        if settings["int8"] and int8_missing():
            raise HeadstartError(int8_missing(), param="int8")
        return trainer.start(settings)

    @app.get("/api/train/progress")
    async def progress() -> dict[str, Any]:
        return trainer.progress()

    @app.post("/api/train/cancel")
    async def cancel() -> dict[str, bool]:
        return {"cancelled": trainer.cancel()}

    @app.get("/api/train/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> Any:
            sent = 0
            while not await request.is_disconnected():
                while sent < len(trainer.events):
                    yield f"data: {json.dumps(trainer.events[sent], default=float)}\n\n"
                    sent += 1
                if trainer.state != "running" and sent >= len(trainer.events):
                    yield f"event: end\ndata: {json.dumps({'state': trainer.state})}\n\n"
                    return
                await asyncio.sleep(0.2)
        return StreamingResponse(stream(), media_type="text/event-stream")


def _run_routes(app: FastAPI, project: Project) -> None:
    """A run's report, predictions with the current run (serve's code), export and
    downloads."""
    predictors: dict[str, Any] = {}

    def _predictor(run: str) -> Any:
        from ..deploy.serve import Predictor
        from ..fit.classifier import Classifier

        if run not in predictors:
            predictors[run] = Predictor(Classifier.load(project.run_dir(run)))
        return predictors[run]

    @app.post("/api/runs/{run}/current")
    async def set_current(run: str) -> dict[str, str]:
        project.run_dir(run)  # it exists
        project.set_current(run)
        return {"current": run}

    @app.get("/api/runs/{run}/report")
    async def report(run: str) -> Response:
        path = project.run_file(run, "report.html")
        if path is None:
            return HTMLResponse("<p>No report: nothing was held out to measure on.</p>")
        return HTMLResponse(read_regular(path, 256 << 20))

    @app.post("/api/predict")
    async def predict(files: list[UploadFile] = File(...)) -> dict[str, Any]:
        run = project.current()
        if run is None:
            raise HeadstartError("no model yet: train first")
        predictor = await asyncio.to_thread(_predictor, run)
        given = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
        records, bad = await predictor.answer(given)
        previews = await asyncio.to_thread(_previews, given)
        for r in records:  # the page shows what a browser cannot (HEIC, TIFF) as a JPEG
            r["preview"] = previews.get(r["filename"])
        counts: dict[str, int] = {}
        for r in records:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        ood = predictor.clf.ood_
        return {"run": run, "counts": counts, "not_sure_below": defaults.NOT_SURE_BELOW,
                "unknown_threshold": float(ood.threshold_) if ood is not None else None,
                "predictions": records + [{"filename": b.filename, "refused": b.reason}
                                          for b in bad]}

    @app.get("/api/runs/{run}/web/{name:path}")
    async def web_page(run: str, name: str) -> Response:
        """The run's web export (``model.web``), for live prediction in "Try"."""
        return await asyncio.to_thread(_web_file, project, run, name)

    @app.get("/api/runs/{run}/download")
    async def download(run: str, format: str = "onnx") -> Any:
        return await asyncio.to_thread(_download, project, run, format)


def _previews(files: list[tuple[str, bytes]], size: int = 192) -> dict[str, str | None]:
    """A small JPEG (a ``data:`` URL) of each uploaded image by its file name."""
    out: dict[str, str | None] = {}
    for name, data in files:
        if name not in out:
            jpeg = thumbnail_jpeg(data, size)
            out[name] = ("data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
                         if jpeg else None)
    return out


def _compare_routes(app: FastAPI, project: Project) -> None:
    """A run's confusion matrix with each cell's images; two runs side by side."""

    @app.get("/api/runs/{run}/confusion")
    async def confusion(run: str) -> dict[str, Any]:
        return await asyncio.to_thread(project.confusion, run)

    @app.get("/api/compare")
    async def compare(a: str, b: str) -> dict[str, Any]:
        return await asyncio.to_thread(project.compare, a, b)


def _export_routes(app: FastAPI, project: Project) -> None:
    """Export a run (one at a time) and its progress."""
    exporting = Job()
    took: dict[str, float] = {}  # seconds the last export of each format took

    @app.post("/api/runs/{run}/export")
    async def export(run: str, body: dict[str, Any]) -> dict[str, Any]:
        from ..deploy.export import export as run_export

        fmt, quantize = str(body.get("format", "onnx")), body.get("quantize") or None
        key = f"{fmt}-{quantize}"

        def work() -> dict[str, Any]:
            t = time.time()
            r = run_export(project.run_dir(run), fmt, quantize=None if quantize is None
                           else str(quantize), progress=exporting.stage)
            took[key] = time.time() - t
            return r
        exporting.expected = took.get(key)
        return await exporting.run(work, fresh=True)

    @app.get("/api/export/progress")
    async def export_progress() -> dict[str, Any]:
        """The export in progress: its stage, seconds so far and (after one export of the
        same format) about how many are left."""
        return exporting.status()


def _download(project: Project, run: str, format: str) -> Response:
    """A run's export (its file, or its files zipped) or the whole run folder (``zip``).

    Raises:
        HeadstartError: an unknown format, or one not exported yet.
    """
    from ..deploy.export import EXPORT_FORMATS

    d = project.run_dir(run)
    form = None if format == "zip" else EXPORT_FORMATS.get(format, param="format")
    names = None if form is None else [p.name for p in form.files(Path(form.default_name()))]
    if names is not None and not all(project.run_entry(run, n) for n in names):
        raise HeadstartError(f"export {format!r} first", param="format")
    if names is not None and len(names) == 1 and form is not None and not form.folder:
        data = read_regular(project.run_file(run, names[0]))
        name, kind = f"{d.name}-{names[0]}", "application/octet-stream"
    else:  # the whole model directory, or an export's files
        data = zip_run(d, names)
        name, kind = f"{d.name}{'' if names is None else '-' + format}.zip", "application/zip"
    return Response(data, media_type=kind, headers={
        "content-disposition": f'attachment; filename="{name}"'})


WEB_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".json": "application/json", ".onnx": "application/octet-stream",
             ".txt": "text/plain; charset=utf-8"}


class Job:
    """One long action at a time (a review, an export) run in a thread, its progress
    readable while it runs and its result after, so that a reloaded page can show both."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.state, self.stage_name, self.error = "idle", "", ""
        self.done = self.total = 0
        self.started = 0.0
        self.expected: float | None = None
        self.result: Any = None

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.stage_name = f"reading images {done} of {total}"

    def stage(self, name: str) -> None:
        self.stage_name = name

    async def run(self, work: Any, fresh: bool = False) -> Any:
        """Start ``work()`` in a thread (or join the one running unless ``fresh``) and
        return its result; its errors are raised to every caller."""
        if self.task is None or self.task.done() or fresh:
            if self.task is not None and not self.task.done():
                raise HeadstartError("another one is running: wait for it to finish")
            self.state, self.error, self.result, self.stage_name = "running", "", None, ""
            self.done = self.total = 0
            self.started = time.time()
            self.task = asyncio.create_task(self._run(work))
        return await asyncio.shield(self.task)

    async def _run(self, work: Any) -> Any:
        try:
            self.result = await asyncio.to_thread(work)
            self.state = "done"
            return self.result
        except Exception as e:
            self.state, self.error = "error", str(e)
            raise

    def status(self) -> dict[str, Any]:
        elapsed = time.time() - self.started if self.started else 0.0
        frac = self.done / self.total if self.total else None
        eta = elapsed * (1 - frac) / frac if frac and frac < 1 else None
        if eta is None and self.expected and self.state == "running":
            eta = max(0.0, self.expected - elapsed)
        return {"state": self.state, "stage": self.stage_name, "done": self.done,
                "total": self.total, "elapsed_s": elapsed, "eta_s": eta,
                "fraction": frac if frac is not None else (
                    min(0.95, elapsed / self.expected) if self.expected else None),
                "error": self.error or None,
                "result": self.result if self.state == "done" else None}


def _web_file(project: Project, run: str, name: str) -> Response:
    """One file of the run's web export, checked to stay inside its folder."""
    from ..deploy.web import FORMAT

    folder = project.run_entry(run, FORMAT.default_name())
    if folder is None:
        raise HeadstartError("export web first", param="format")
    path = inside(folder, name, "file", "file")
    kind = WEB_TYPES.get(path.suffix)
    if kind is None:
        raise HeadstartError(f"{name}: not a file of the web export", param="name")
    return Response(read_regular(path, 256 << 20), media_type=kind,
                    headers={"cache-control": "no-store"})


def _review_routes(app: FastAPI, project: Project) -> None:
    """The label review of the project's data, and one suggestion applied."""

    job = Job()

    @app.get("/api/review/progress")
    async def review_progress() -> dict[str, Any]:
        """The review in progress (or the last one): ``state``, images read of ``total``,
        seconds so far and left, and its ``result`` once done (a reloaded page reads it)."""
        return job.status()

    @app.get("/api/review")
    async def review() -> dict[str, Any]:
        """Review the project's labels (joining a review already running)."""
        from ..insight.review import review as run_review

        def work() -> dict[str, Any]:
            r = run_review(project.data, progress=job.progress)
            base = str(project.data) + "/"
            return {"oof_accuracy": r.oof_accuracy, "images": r.images, "suggestions": [
                {**s.__dict__, "path": s.path[len(base):] if s.path.startswith(base)
                 else s.path} for s in r.suggestions]}
        return await job.run(work)

    @app.post("/api/review/apply")
    async def relabel(body: dict[str, str]) -> dict[str, Any]:
        from ..insight.review import apply_rows

        src = project.inside(body.get("path", ""))
        log, moved = apply_rows([{"action": body.get("action", "move"), "path": str(src),
                                  "suggested": body.get("suggested", "")}], project.data)
        return {"moved": moved, "log": log.name if moved else None}


def create_studio_app(project: str | os.PathLike, token: str, host: str = "127.0.0.1",
                      port: int = defaults.STUDIO_PORT, allow_hosts: tuple[str, ...] = (),
                      body_timeout: float = defaults.BODY_TIMEOUT_S) -> Any:
    """The FastAPI application of the studio over ``project`` (see the module docstring).
    ``host``/``port``: where it is served; ``allow_hosts``: more ``Host`` names to answer
    (a LAN address or name); ``body_timeout``: see :class:`headstart.deploy.serve.LimitBody`."""
    return _routes(Project(project), token, host, port, tuple(allow_hosts), body_timeout)
