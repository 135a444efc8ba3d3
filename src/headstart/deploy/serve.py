"""Serving a trained model over HTTP: FastAPI on uvicorn.

Endpoints:

* ``POST /predict``: one or more images as multipart ``files`` fields; returns
  ``{"predictions": [{"filename", "label", "probability", "probabilities", "unknown",
  "unknown_score"}]}`` in upload order. Images from concurrent requests are decoded in a
  thread pool and run through the backbone together (up to ``max_batch`` images, waiting at
  most ``batch_wait_ms`` for images still being decoded; a lone request never waits), so
  throughput grows with load.
* ``GET /health``, ``GET /info`` (classes, backbone, validation metrics, limits),
  ``GET /`` (a page to try the model: drag and drop images), ``GET /docs`` (OpenAPI UI,
  served locally).

Bad input never gets a 500: a body over ``max_upload_mb`` gets 413, a body that trickles
in (later than ``body_timeout_s`` plus 1 s per KiB) gets 408 and its connection closed, an
image over ``max_pixels`` gets 413, more than ``max_files`` files gets 413, an image that
does not decode gets 422 with the file name and reason (the whole request is answered with
422 then, so clients never mistake a partial answer for a full one), a request without
files gets 422.

``serve`` only answers predictions and changes nothing on disk, so it answers any
``Host`` (put it behind a proxy under any name); the studio, which changes files, answers
only its own (:mod:`headstart.studio.app`).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from .. import __version__
from .. import defaults
from ..io.files import worker_count
from ..io.decode import UnreadableImage, check_upload
from ..errors import HeadstartError
from ..backbone.features import prepare_image
from ..fit.classifier import Classifier

__all__ = ["LimitBody", "Limits", "Predictor", "check_port", "create_app", "serve"]

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
BODY_TAIL = "headstart.body_tail"


@dataclass
class Limits:
    """Request limits of the server (see the module docstring); checked on construction.

    Raises:
        HeadstartError: a limit that is not a positive number (the message names it).
    """

    max_upload_mb: float = defaults.MAX_UPLOAD_MB
    max_pixels: int = defaults.MAX_PIXELS
    max_files: int = defaults.MAX_FILES
    max_batch: int = defaults.MAX_BATCH
    batch_wait_ms: float = defaults.BATCH_WAIT_MS
    body_timeout_s: float = defaults.BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "max_files", "max_batch",
                     "body_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise HeadstartError(param=name, expected="a number > 0", got=value)
        if self.batch_wait_ms < 0:
            raise HeadstartError(param="batch_wait_ms", expected=">= 0",
                                 got=self.batch_wait_ms)


class _BadImage(Exception):
    def __init__(self, status: int, filename: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.filename, self.reason = status, filename, reason


class _Batcher:
    """Collects decoded images from concurrent requests and runs them as one batch."""

    def __init__(self, clf: Classifier, limits: Limits) -> None:
        self.clf, self.limits = clf, limits
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="headstart-infer")
        self.batches = 0
        self.images = 0
        self.decoding = 0  # images of requests being decoded, about to join a batch

    async def predict(self, x: np.ndarray) -> Any:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while len(items) < self.limits.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0 or self.decoding == 0:  # nobody else is coming: run now
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = np.stack([x for x, _ in items])
            try:
                pred = await loop.run_in_executor(self.pool, self.clf.predict_arrays, batch)
            except Exception as e:  # noqa: BLE001 - passed on to every waiting request
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.images += len(items)
            for i, (_, fut) in enumerate(items):
                if not fut.done():
                    fut.set_result((pred, i))


class Predictor:
    """The answers to uploaded images, for ``serve`` and the studio alike: uploads decoded
    in a thread pool with the upload checks, images of concurrent requests run as one
    batch, each answer the prediction record (see
    :meth:`headstart.fit.predictions.Predictions.record`) keyed by ``filename``."""

    def __init__(self, clf: Classifier, limits: Limits | None = None) -> None:
        self.clf, self.limits = clf, limits or Limits()
        self.batcher = _Batcher(clf, self.limits)
        self.decoders = ThreadPoolExecutor(worker_count(), thread_name_prefix="headstart-decode")
        self._task: asyncio.Task | None = None

    def warm(self) -> None:
        """Compile the engine now, so that the first request is not the slow one; on a
        first run the engine's check against PyTorch sees varied images, not a blank one."""
        size = self.clf.backbone_.preprocess.size
        coarse = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8)
        self.clf.predict_arrays(np.repeat(np.repeat(coarse, -(-size // 8), 1),
                                          -(-size // 8), 2)[:, :size, :size])

    async def answer(self, payloads: list[tuple[str, bytes]], partial: bool = True
                     ) -> tuple[list[dict[str, Any]], list[_BadImage]]:
        """``(filename, bytes)`` uploads -> the records of those that decode, in upload
        order, and the refusals (status, filename, reason) of those that do not
        (``partial`` off: no records at all when one is refused)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.batcher.run())
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self.decoders, _decode, data, fname, self.clf,
                                     self.limits.max_pixels) for fname, data in payloads]
        self.batcher.decoding += len(jobs)
        try:
            decoded = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            self.batcher.decoding -= len(jobs)
        for d in decoded:
            if isinstance(d, BaseException) and not isinstance(d, _BadImage):
                raise d
        bad = [d for d in decoded if isinstance(d, _BadImage)]
        if bad and not partial:
            return [], bad
        good = [(fname, x) for (fname, _), x in zip(payloads, decoded)
                if not isinstance(x, BaseException)]
        answers = await asyncio.gather(*(self.batcher.predict(x) for _, x in good))
        return [pred.record(i, "filename", fname)
                for (fname, _), (pred, i) in zip(good, answers)], bad

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _decode(data: bytes, filename: str, clf: Classifier, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> the backbone's ``(S, S, 3)`` uint8 input, or :class:`_BadImage`."""
    try:
        check_upload(data, max_pixels)
        return prepare_image(io.BytesIO(data), clf.backbone_.preprocess)
    except UnreadableImage as e:
        status = 413 if str(e).startswith("too many pixels") else 422
        raise _BadImage(status, filename, str(e)) from None


class LimitBody:
    """ASGI middleware on request bodies: 413 for one over ``max_bytes`` (declared or not),
    408 for one that arrives too slowly (``body_timeout`` seconds, plus one second for
    every ``min_rate`` bytes received: a client trickling bytes cannot hold a connection
    open forever); ``hint``: how to raise the size limit, appended to its message."""

    class Refused(Exception):
        def __init__(self, status: int, detail: str) -> None:
            super().__init__(detail)
            self.status, self.detail = status, detail

    def __init__(self, app: Any, max_bytes: int, hint: str = " (--max-upload-mb)",
                 body_timeout: float = defaults.BODY_TIMEOUT_S,
                 min_rate: float = defaults.BODY_MIN_RATE) -> None:
        self.app, self.max_bytes, self.hint = app, max_bytes, hint
        self.body_timeout, self.min_rate = body_timeout, min_rate

    @staticmethod
    async def _reply(send: Any, refused: "LimitBody.Refused") -> None:
        body = json.dumps({"detail": refused.detail}).encode()
        await send({"type": "http.response.start", "status": refused.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _too_large(self) -> "LimitBody.Refused":
        return self.Refused(413, f"request body larger than {self.max_bytes:,} bytes"
                                 f"{self.hint}")

    async def _receive(self, receive: Any, start: float, seen: int) -> Any:
        """The next message, or :class:`Refused` (408) once the body is late."""
        loop = asyncio.get_running_loop()
        left = start + self.body_timeout + seen / self.min_rate - loop.time()
        try:
            return await asyncio.wait_for(receive(), max(left, 0.01))
        except asyncio.TimeoutError:
            raise self.Refused(408, f"request body too slow: {seen:,} bytes in "
                                    f"{loop.time() - start:.0f} s (a body must arrive "
                                    f"within {self.body_timeout:g} s plus 1 s per "
                                    f"{self.min_rate:,.0f} bytes)") from None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = asyncio.get_running_loop().time()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            drained = 0  # read what the client sends (up to a bound) so it sees the answer
            try:
                while drained < 8 * self.max_bytes:
                    message = await self._receive(receive, start, drained)
                    drained += len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
            except self.Refused:
                pass
            return await self._reply(send, self._too_large())
        seen = 0
        refused: LimitBody.Refused | None = None
        replied = False

        async def counted() -> Any:
            nonlocal seen, refused
            try:
                message = await self._receive(receive, start, seen)
            except self.Refused as e:
                refused = e
                raise
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                # the end of the body, to tell a cut-off multipart body (400) from one
                # without a 'files' field (422)
                scope[BODY_TAIL] = (scope.get(BODY_TAIL, b"") + body)[-256:]
                if seen > self.max_bytes:
                    refused = self._too_large()
                    raise refused
            return message

        async def guarded(message: Any) -> None:
            nonlocal replied
            if refused is None:
                return await send(message)
            if message["type"] == "http.response.start" and not replied:
                replied = True  # whatever the app made of the aborted body: it is refused
                await self._reply(send, refused)
        try:
            await self.app(scope, counted, guarded)
        except self.Refused:
            pass
        if refused is not None and not replied:
            await self._reply(send, refused)


def create_app(model: str | os.PathLike | Classifier, limits: Limits | None = None,
               cache_dir: str | os.PathLike | None = None, runtime: str = "auto") -> Any:
    """The FastAPI application serving ``model`` (a model directory or a fitted
    :class:`Classifier`)."""
    limits = limits or Limits()
    clf = model if isinstance(model, Classifier) else Classifier.load(
        model, cache_dir=cache_dir, runtime=runtime)
    name = Path(str(model)).name if not isinstance(model, Classifier) else "model"
    predictor = Predictor(clf, limits)
    predictor.warm()

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        predictor.close()

    app = FastAPI(title=f"headstart: {name}", version=__version__, docs_url=None,
                  redoc_url=None, lifespan=lifespan,
                  description=f"Image classifier ({', '.join(clf.classes_)}) trained with "
                              "headstart.")
    _add_docs(app)
    _add_error_handlers(app)
    _add_routes(app, predictor, name)
    app.add_middleware(LimitBody, max_bytes=int(limits.max_upload_mb * 1024 * 1024),
                       body_timeout=limits.body_timeout_s)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs``: the OpenAPI UI from the packaged swagger assets (no CDN when installed)."""
    swagger = _swagger_assets()
    if swagger is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount("/static/swagger", StaticFiles(directory=swagger), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        local = swagger is not None
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=app.title,
            swagger_js_url="/static/swagger/swagger-ui-bundle.js" if local else
            "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css" if local else
            "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png" if local else
            "https://fastapi.tiangolo.com/img/favicon.png")


def _add_error_handlers(app: FastAPI) -> None:
    """A broken multipart body gets 400, other invalid requests 422, a bug 500 (logged)."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            boundary = ctype.partition("boundary=")[2].split(";")[0].strip().strip('"')
            end = b"--" + boundary.encode("latin-1", "replace") + b"--"
            if not request.scope.get(BODY_TAIL, b"").rstrip().endswith(end):
                return JSONResponse({"detail": "broken multipart body: it does not end "
                                     "with its closing boundary (cut off, or a wrong "
                                     "boundary)"}, status_code=400)
        return JSONResponse({"detail": "send images as multipart/form-data fields named "
                             "'files'", "errors": json.loads(json.dumps(
                                 exc.errors(), default=str))}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, 500)


def _add_routes(app: FastAPI, predictor: Predictor, name: str) -> None:
    """``/health``, ``/info``, ``/predict`` and the page ``/``."""
    clf, limits, batcher, started = predictor.clf, predictor.limits, predictor.batcher, \
        time.time()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded and answering."""
        return {"status": "ok", "model": name, "uptime_s": round(time.time() - started, 1),
                "images_served": batcher.images, "batches": batcher.batches}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """Classes, backbone, preprocessing, validation metrics and limits."""
        s, ood = clf.summary_, clf.ood_
        return {"model": name, "classes": clf.classes_, "backbone": clf.backbone_.name,
                "head": clf.head_.kind, "preprocess": clf.backbone_.preprocess.to_dict(),
                "validation": {"accuracy": s.val_accuracy, "images": s.val_images,
                               "how": s.val_source, "calibration": s.calibration.to_dict()},
                "train_counts": s.train_counts, "trained_at": s.trained_at,
                "unknown_threshold": float(ood.threshold_) if ood is not None else None,
                "runtime": clf.engine_.name if clf.engine_ is not None else None,
                "limits": asdict(limits), "headstart_version": __version__}

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(..., description="Image files.")
                      ) -> Any:
        """Classify one or more images (multipart field ``files``, repeated)."""
        if len(files) > limits.max_files:
            return JSONResponse({"detail": f"{len(files)} files; at most {limits.max_files} "
                                 "per request"}, status_code=413)
        payloads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
        records, bad = await predictor.answer(payloads, partial=False)
        if bad:
            return JSONResponse({"detail": [{"filename": b.filename, "reason": b.reason}
                                            for b in bad]},
                                status_code=max(b.status for b in bad))
        return {"predictions": records}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text()


def _swagger_assets() -> str | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


def check_port(host: str, port: int) -> None:
    """Raise :class:`HeadstartError` (one line, naming ``port``) unless ``host:port`` can
    be listened on now."""
    import socket

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise HeadstartError(param="port", expected="0-65535", got=port)
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise HeadstartError(f"cannot listen on {host}:{port} ({e.strerror}); choose another "
                             "port", param="port") from None


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = defaults.PORT,
          limits: Limits | None = None, cache_dir: str | os.PathLike | None = None,
          runtime: str = "auto", log_level: str = "info",
          on_ready: Callable[[], None] | None = None) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted; ``on_ready()`` is called
    once the model is loaded and checked, just before the server starts listening.

    Raises:
        HeadstartError: the port is out of range or busy, or the model directory is missing
            or invalid (nothing is served then).
    """
    import uvicorn

    check_port(host, port)
    app = create_app(model, limits, cache_dir, runtime)
    if on_ready is not None:
        on_ready()
    uvicorn.run(app, host=host, port=port, log_level=log_level)
