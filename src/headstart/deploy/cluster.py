"""Prediction on a Ray cluster, with Ray Data (``pip install 'headstart[ray]'``).

:func:`predict_ray` is :func:`headstart.deploy.stream.predict_stream` with the work spread over
Ray: the file list becomes a Ray dataset, an actor pool of ``workers`` runs the whole model
(decode, backbone engine, head, calibration, unknown) on batches of ``chunk`` paths, one
engine per actor. Each actor writes its batch's rows as a shard, one file in a hidden folder
beside the output (``.NAME.parts/``), and sends back only paths and labels; this process
merges each shard into the output as soon as its batch is reported (fsynced, then the shard
deleted), so the output grows as with local streaming and has the same columns and the same
``resume`` semantics: shards a killed run left unmerged are merged first. The
model directory is read here and shipped to the actors once through Ray's object store, so
the workers need the images and the output's folder (a shared file system) but not the
model. ``address``:
``local`` starts a private Ray on this machine (``workers`` CPUs, nothing exposed beyond
127.0.0.1), ``auto`` joins the running cluster, ``ray://HOST:PORT`` a remote one.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, TextIO

import numpy as np

from ..io.files import load_json
from .._threads import cores
from ..errors import HeadstartError
from ..deploy.stream import (StreamProgress, StreamResult, Writer, chunks, open_output, output_format,
                     pending)
from ..io.walk import Skipped, existing, iter_images

__all__ = ["RAY_HINT", "features_ray", "predict_ray"]

logger = logging.getLogger(__name__)

RAY_HINT = "install Ray first: pip install 'headstart[ray]'"


class _Predictor:
    """A Ray Data actor: the model, loaded once from ``files`` (name -> bytes, or a Ray
    object reference to them), applied to batches of paths. Each batch's rows are written
    by the actor into one file of ``parts`` (the output's format, written whole, fsynced,
    then renamed into place); what comes back is one small row per path: ``path, label,
    reason`` (``reason`` non-empty when unreadable) and ``part``, the file's name."""

    def __init__(self, files: Any, threads: int, unknown: bool, parts: str, fmt: str
                 ) -> None:
        os.environ["HEADSTART_THREADS"] = str(threads)
        import ray

        from ..fit.classifier import Classifier

        if isinstance(files, ray.ObjectRef):  # shipped once through the object store
            files = ray.get(files)

        self._dir = tempfile.TemporaryDirectory(prefix="headstart-model-")
        for name, data in files.items():
            (Path(self._dir.name) / name).write_bytes(data)
        self.clf = Classifier.load(self._dir.name, cache=False, unknown=unknown)
        self.parts, self.fmt = Path(parts), fmt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        pred = self.clf.predict_images(paths)
        name = f"part-{uuid.uuid4().hex}.{self.fmt}"
        tmp = self.parts / f".{name}.tmp"
        with tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            Writer(fh, self.fmt, list(self.clf.classes_), with_header=False).rows(
                pred, {p: f.digest for p, f in zip(pred.sources, pred.facts or [])})
        os.replace(tmp, self.parts / name)
        label = dict(zip(pred.sources, pred.labels))
        why = {s.path: s.reason for s in pred.skipped}
        return {"path": np.asarray(paths, dtype=object),
                "label": np.asarray([label.get(p, "") for p in paths], object),
                "reason": np.asarray([why.get(p, "" if p in label else "unreadable")
                                      for p in paths], object),
                "part": np.asarray([name] * len(paths), object)}


def parts_folder(out: Path) -> Path:
    """Where the workers write their row files for ``out``: a hidden folder beside it."""
    return out.with_name(f".{out.name}.parts")


def merge_part(part: Path, fh: TextIO, fmt: str, done: dict[str, str]) -> int:
    """Append the rows of one worker's row file to the open output ``fh``, except those of
    paths already in ``done`` (``{path: content hash}``, updated), then fsync ``fh`` and
    delete ``part``; returns the rows appended. A kill at any point leaves the row either
    in the output or still in ``part`` (or both: the next merge skips it)."""
    text = part.read_text(encoding="utf-8", errors="surrogateescape")
    n = 0
    if fmt == "csv":
        w = csv.writer(fh)
        for row in csv.reader(io.StringIO(text)):
            if row and row[0] not in done:
                w.writerow(row)
                done[row[0]], n = row[-1], n + 1
    else:
        for line in text.splitlines():
            row = load_json(line, 4) if line.strip() else None
            if row is not None and row["path"] not in done:
                fh.write(line + "\n")
                done[row["path"]], n = row["content_hash"], n + 1
    fh.flush()
    os.fsync(fh.fileno())
    part.unlink()
    return n


class _Featurizer:
    """A Ray Data actor: frozen features of batches of paths under a backbone by name (one
    engine per actor); rows ``path, digest, x`` (``x`` empty when unreadable)."""

    def __init__(self, backbone: str, threads: int, taps: bool = False) -> None:
        os.environ["HEADSTART_THREADS"] = str(threads)
        from ..backbone.build import load_backbone

        bb = load_backbone(backbone)
        self.backbone, self.engine = (bb.with_taps() or bb) if taps else bb, None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..backbone.features import extract_features

        paths = [str(p) for p in batch["path"]]
        feats = extract_features(self.backbone, paths, None, engine=self.engine)
        self.engine = feats.engine or self.engine
        x = np.zeros((len(paths), self.backbone.num_features), np.float32)
        ok = np.zeros(len(paths), bool)
        x[feats.index], ok[feats.index] = feats.X, True
        return {"path": np.asarray(paths, object), "ok": ok, "x": x,
                "digest": np.asarray([f.digest or "" for f in feats.facts], object)}


def features_ray(backbone: str, paths: list[Any], cache_dir: str | os.PathLike | None = None,
                 address: str = "local", workers: int = 2, chunk: int = 64,
                 taps: bool = False) -> int:
    """Compute on Ray the features ``train`` needs and put them in the feature cache, so
    that fitting finds every one of them there (heads are fitted locally, as always);
    returns how many were computed (images already cached are not sent). ``taps``: those
    of the tapped backbone (as :func:`headstart.fit.stages.use_taps` decides for ``fit``).

    Raises:
        HeadstartError: Ray missing or unreachable.
    """
    from ..io.files import digest_bytes, read_regular, resolve_cache_dir
    from ..backbone.build import load_backbone
    from ..backbone.features import FeatureCache

    bb = load_backbone(backbone, cache_dir=cache_dir)
    bb = (bb.with_taps() or bb) if taps else bb
    cache, key = FeatureCache(resolve_cache_dir(cache_dir)), bb.identity()
    todo = []
    for p in paths:
        try:
            if cache.get(key, digest_bytes(read_regular(p))) is None:
                todo.append(str(p))
        except (OSError, ValueError):
            todo.append(str(p))  # the workers report it, as a local pass would
    if not todo:
        return 0
    ray = _init(address, workers)
    done = 0
    try:
        rows = _on_actors(ray, todo, chunk, workers, _Featurizer,
                          (backbone, _threads(workers), taps))
        for b in rows.iter_batches(batch_size=None, batch_format="numpy"):
            for i in np.flatnonzero(b["ok"]):
                cache.put(key, str(b["digest"][i]), b["x"][i])
                done += 1
    finally:
        ray.shutdown()
    logger.info("computed %d feature vector(s) on Ray (%s, %d workers)", done, address,
                workers)
    return done


def _on_actors(ray: Any, paths: list[str], chunk: int, workers: int, actor: type,
               args: tuple[Any, ...]) -> Any:
    """``actor(*args)`` mapped over a Ray dataset of ``path`` rows in batches of ``chunk``:
    blocks of one batch each (Ray's own blocks split batches: 260 rows made batches of 256
    and 4), on ``workers`` actors or one a block when there are fewer blocks (an idle actor
    only costs its start-up, and Ray warns about it). Actors are not restarted: a dead
    worker fails the run, which ``resume`` continues (Ray warns, rightly, that restarting
    an actor whose arguments came through the object store can fail)."""
    blocks = max(1, -(-len(paths) // chunk))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    _quiet_ray()
    with warnings.catch_warnings():  # Ray 2.60 has no other way to say max_restarts
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(actor, fn_constructor_args=args, batch_size=chunk,
                              batch_format="numpy", num_cpus=1, max_restarts=0,
                              compute=ray.data.ActorPoolStrategy(size=min(workers, blocks)))


def _quiet_ray() -> None:
    """Ray's Python loggers (Ray Data configures its own, with their own levels) to errors
    only: the CLI owns stdout and stderr."""
    for name in list(logging.root.manager.loggerDict):
        if name == "ray" or name.startswith("ray."):
            logging.getLogger(name).setLevel(logging.ERROR)


def _init(address: str, workers: int) -> Any:
    try:
        import ray
    except ImportError:
        raise HeadstartError(f"Ray is not installed; {RAY_HINT}", param="cluster") from None
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise HeadstartError(f"cannot start or reach Ray at {address!r}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                             param="cluster") from None
    _quiet_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return ray


def predict_ray(model_dir: str | os.PathLike, paths: Iterable[str | os.PathLike],
                out: str | os.PathLike, fmt: str | None = None, resume: bool = False,
                address: str = "local", workers: int = 2, chunk: int = 256,
                progress: StreamProgress | None = None, unknown: bool = True) -> StreamResult:
    """Predict every image under ``paths`` into ``out`` on Ray (see the module docstring);
    the same rows as :func:`headstart.deploy.stream.predict_stream` (in the order batches finish).

    Raises:
        HeadstartError: Ray missing or the cluster unreachable; a path does not exist; the
            workers' row files are not visible here (``out`` not on a shared file system).
    """
    from ..fit.classifier import Classifier

    t0 = time.perf_counter()
    if workers < 1:
        raise HeadstartError(param="workers", expected=">= 1", got=workers)
    if chunk < 1:
        raise HeadstartError(param="chunk", expected=">= 1", got=chunk)
    model_dir, out = Path(model_dir), Path(out)
    fmt, paths = output_format(out, fmt), existing(paths)
    classes = list(Classifier.load(model_dir, cache=False).classes_)  # checks the model here
    files = {f.name: f.read_bytes() for f in model_dir.iterdir() if f.is_file()}
    parts = parts_folder(out)
    result = StreamResult()
    todo: list[str] = []
    with open_output(out, fmt, classes, resume) as output:
        writer, done = output.writer, output.done
        if parts.is_dir():  # rows a killed run's workers wrote and it did not merge
            for part in sorted(parts.glob(f"part-*.{fmt}")) if resume else ():
                merge_part(part, writer.fh, fmt, done)
            _clear(parts)
        for batch in chunks(iter_images(paths), 1024, result.skipped):
            left = pending(batch, done)
            result.resumed += len(batch) - len(left)
            todo += [str(f) for f in left]
        output.supersede(todo)  # changed since its row: its new row replaces it, as locally
        if todo:
            parts.mkdir()
            _run(todo, files, parts, fmt, writer, done, result, address, workers, chunk,
                 unknown, progress, t0)
            _clear(parts)  # only once every row is merged: a failed run is resumable
    counts = dict.fromkeys(classes, 0)
    for label in result.counts:
        counts[label] = result.counts[label]
    result.counts, result.seconds = counts, round(time.perf_counter() - t0, 2)
    logger.info("predicted %d image(s) on Ray (%s, %d workers) into %s in %.1f s",
                result.written, address, workers, out, result.seconds)
    return result


def _threads(workers: int) -> int:
    """Threads for each of ``workers`` actors on this machine's cores: at least 2, so that
    decoding overlaps inference (2 cores, 2 actors, 2,000 images: 0.53x of local
    streaming against 0.45x with one thread each)."""
    return max(2, cores() // workers)


def _clear(parts: Path) -> None:
    """Delete the row files in ``parts`` (and their unfinished ``.tmp`` files), then the
    folder; anything else in it is left and reported."""
    for f in list(parts.glob("part-*")) + list(parts.glob(".part-*.tmp")):
        f.unlink()
    try:
        parts.rmdir()
    except OSError:
        raise HeadstartError(f"{parts} holds files headstart did not write; move them and "
                             "run again", param="cluster") from None


def _run(todo: list[str], files: dict[str, bytes], parts: Path, fmt: str, writer: Writer,
         done: dict[str, str], result: StreamResult, address: str, workers: int, chunk: int,
         unknown: bool, progress: StreamProgress | None, t0: float) -> None:
    """The Ray Data pipeline over ``todo``: each finished batch's row file is merged into
    the output as its small result rows arrive here."""
    ray = _init(address, workers)
    try:
        rows = _on_actors(ray, todo, chunk, workers, _Predictor,
                          (ray.put(files), _threads(workers), unknown, str(parts), fmt))
        for b in rows.iter_batches(batch_size=None, batch_format="numpy"):
            for name in dict.fromkeys(b["part"]):
                part = parts / str(name)
                if not part.exists():
                    raise HeadstartError(
                        f"cluster: the workers' row file {part} is not visible here: put "
                        f"the output on a file system the workers share")
                result.written += merge_part(part, writer.fh, fmt, done)
            ok = b["reason"] == ""
            for label in b["label"][ok]:
                result.counts[str(label)] = result.counts.get(str(label), 0) + 1
            result.skipped += [Skipped(str(p), str(r)) for p, r in
                               zip(b["path"][~ok], b["reason"][~ok])]
            if progress:
                progress(result.written + result.resumed,
                         result.written / max(time.perf_counter() - t0, 1e-9))
    finally:
        ray.shutdown()
