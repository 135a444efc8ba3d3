"""Frozen-backbone features, batched and cached on disk.

:func:`extract_features` maps N images to an ``(N, D)`` float32 array of pooled backbone
features. Decoding and resizing run in a thread pool while the backbone works on the
previous batch. Each feature vector is cached under the backbone's identity (weights +
preprocessing) and the hash of the image file's bytes, so a second run over the same files
does no backbone work at all.

Cache location: the ``cache_dir`` argument, else ``$HEADSTART_CACHE``, else the user cache
directory (``~/.cache/headstart`` on Linux).
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..io.files import digest_bytes, resolve_cache_dir, worker_count
from ..backbone.build import Backbone, Preprocess
from ..io.dataset import Skipped
from ..io.decode import UnreadableImage, check_pixels, load_bytes, open_image, read_image
from ..backbone.runtime import Engine, make_engine

__all__ = ["FeatureCache", "Features", "FileFacts", "extract_features", "file_hash",
           "normalize", "prepare_image", "preprocess_image", "resolve_cache_dir",
           "scan_images", "thumbnail"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
MAX_AHEAD = 512  # images decoded ahead while the engine is still being built

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
             "nearest": Image.NEAREST, "lanczos": Image.LANCZOS, "box": Image.BOX}


def _crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float, float]:
    """Source-pixel box that "resize shorter side to size/crop_pct, centre-crop size" keeps."""
    side = min(width, height) * pre.size / int(pre.size / pre.crop_pct)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def prepare_image(source: "str | os.PathLike | Image.Image", pre: Preprocess) -> np.ndarray:
    """Decode, resize and centre-crop one image to ``(S, S, 3)`` uint8 RGB.

    Large JPEGs are decoded in draft mode (DCT-domain downscaling, never below the resize
    target) before the exact resize; the crop and the resize are one resampling step.

    Raises:
        UnreadableImage: the file cannot be decoded.
    """
    if isinstance(source, Image.Image):
        return _decoded(source, pre, jpeg_draft=False)[0]  # type: ignore[return-value]
    return _decoded(open_image(source), pre, jpeg_draft=True)[0]  # type: ignore[return-value]


def normalize(batch: np.ndarray, pre: Preprocess) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 -> ``(N, 3, S, S)`` float32 ``(x / 255 - mean) / std``."""
    x = batch.astype(np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(img: "str | os.PathLike | Image.Image", pre: Preprocess) -> np.ndarray:
    """One image as the backbone's normalised ``(3, S, S)`` float32 input."""
    return normalize(prepare_image(img, pre)[None], pre)[0]


def file_hash(path: str | os.PathLike) -> str:
    """Hex digest of a file's bytes (the cache key of its features).

    Raises:
        UnreadableImage: not a regular file, or unreadable (see :func:`load_bytes`).
    """
    return digest_bytes(load_bytes(path))


@dataclass(frozen=True)
class FileFacts:
    """What the one pass over an image file learned: its content hash, its size in pixels,
    frames and format from the header, and a ``(16, 16)`` zero-mean unit-norm grey
    thumbnail of the whole picture (for near-duplicate checks; None when not made).
    ``digest`` is None for an in-memory image or a file that could not be read."""

    digest: str | None
    width: int = 0
    height: int = 0
    frames: int = 1
    format: str | None = None
    thumb: np.ndarray | None = field(default=None, compare=False, repr=False)


def thumbnail(rgb: Image.Image) -> np.ndarray:
    """``(16, 16)`` float32 zero-mean unit-norm grey thumbnail of a decoded image."""
    a = np.asarray(ImageOps.grayscale(rgb).resize((16, 16), Image.BOX), np.float32)
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


class FeatureCache:
    """Feature vectors on disk: ``<root>/features/<backbone identity>/<hh>/<hash>.npy``;
    thumbnails (which do not depend on the backbone) under the key ``thumbs``."""

    THUMBS = "thumbs"

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = resolve_cache_dir(root)

    def _path(self, key: str, digest: str) -> Path:
        sub = "thumbs" if key == self.THUMBS else f"features/{key}"
        return self.root / sub / digest[:2] / f"{digest}.npy"

    def get(self, key: str, digest: str) -> np.ndarray | None:
        try:
            return np.load(self._path(key, digest), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, key: str, digest: str, vector: np.ndarray) -> None:
        path = self._path(key, digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as e:  # a read-only or full cache must not stop the run
            logger.warning("feature cache not written (%s): %s", path, e)


@dataclass
class Features:
    """Features of the usable images, and what the pass learned of every input.

    Attributes:
        X: ``(M, D)`` float32 features, M <= N.
        index: ``(M,)`` positions of those images in the input sequence.
        skipped: the inputs that could not be decoded, with reasons.
        computed: how many of the M needed a backbone forward pass (the rest were cached).
        engine: the inference engine used (reuse it for the next call), None if unused.
        facts: ``(N,)`` :class:`FileFacts` of every input, in input order (with thumbnails
            when asked for).
    """

    X: np.ndarray
    index: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    computed: int = 0
    engine: Engine | None = None
    facts: list[FileFacts] = field(default_factory=list)


@dataclass
class _Read:
    """One input after the pass: its facts, cached features, or the network input."""

    facts: FileFacts
    cached: np.ndarray | None = None
    array: np.ndarray | None = None
    reason: str | None = None


def _header(img: Image.Image, digest: str | None) -> FileFacts:
    return FileFacts(digest, img.width, img.height, getattr(img, "n_frames", 1), img.format)


def _decoded(img: Image.Image, pre: Preprocess | None, jpeg_draft: bool) -> tuple[
        np.ndarray | None, Image.Image]:
    """The network input ``(S, S, 3)`` (None without ``pre``) and the decoded RGB image."""
    if pre is not None and jpeg_draft and img.format == "JPEG":
        check_pixels(img)  # on the full size, before draft mode shrinks it
        target = int(pre.size / pre.crop_pct)
        img.draft("RGB", (target, target))
    rgb = read_image(img)
    if pre is None:
        return None, rgb
    out = rgb.resize((pre.size, pre.size), _RESAMPLE.get(pre.interpolation, Image.BICUBIC),
                     box=_crop_box(*rgb.size, pre))
    return np.asarray(out, dtype=np.uint8), rgb


def _read_one(src: "str | os.PathLike | Image.Image", pre: Preprocess | None,
              cache: FeatureCache | None, key: str, dim: int, thumbs: bool) -> _Read:
    """Read ``src`` once: bytes -> hash -> header -> cached features, else decoded input."""
    if isinstance(src, Image.Image):
        try:
            array, rgb = _decoded(src, pre, jpeg_draft=False)
        except UnreadableImage as e:
            return _Read(FileFacts(None), reason=str(e))
        facts = _header(src, None)
        return _Read(FileFacts(None, facts.width, facts.height, facts.frames, facts.format,
                               thumbnail(rgb) if thumbs else None), array=array)
    try:
        data = load_bytes(src)
    except UnreadableImage as e:
        return _Read(FileFacts(None), reason=str(e))
    digest = digest_bytes(data)
    try:
        img = open_image(data)
    except UnreadableImage as e:
        return _Read(FileFacts(digest), reason=str(e))
    facts = _header(img, digest)
    hit = cache.get(key, digest) if cache is not None and pre is not None else None
    thumb = cache.get(FeatureCache.THUMBS, digest) if cache is not None and thumbs else None
    if hit is not None and hit.shape != (dim,):
        hit = None
    if hit is not None and (not thumbs or thumb is not None):
        return _Read(replace(facts, thumb=thumb), cached=hit)
    try:
        if hit is not None:  # only the thumbnail is missing: a small decode will do
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))
            array, rgb = None, read_image(img)
        else:
            array, rgb = _decoded(img, pre, jpeg_draft=True)
    except UnreadableImage as e:
        return _Read(facts, reason=str(e))
    if thumbs:
        thumb = thumbnail(rgb)
        if cache is not None:
            cache.put(FeatureCache.THUMBS, digest, thumb)
    return _Read(replace(facts, thumb=thumb), cached=hit, array=array)


def extract_features(backbone: Backbone, images: Sequence["str | os.PathLike | Image.Image"],
                     cache: FeatureCache | None = None, batch_size: int = 32,
                     progress: ProgressFn | None = None, workers: int | None = None,
                     runtime: str = "auto", engine: Engine | None = None,
                     thumbs: bool = False) -> Features:
    """Pooled features of ``images`` (paths or PIL images) under ``backbone``, in one pass
    over the files.

    Each file is read once, by ``workers`` threads: its bytes give the content hash (the
    cache key), the header facts and, when the features are not cached, the network input,
    which the engine (see :mod:`headstart.backbone.runtime`; ``engine`` reuses one, else ``runtime``
    picks one) runs in batches of ``batch_size`` while the threads read ahead. With
    ``thumbs``, each file's thumbnail comes out of the same pass (cached too). Unreadable
    files are skipped and listed in ``Features.skipped``; the result does not depend on
    ``workers`` or ``batch_size``. PIL images are never cached (they have no file to hash).
    """
    n = len(images)
    p = _Pass(backbone, images, cache, batch_size, runtime, engine, thumbs)
    chunks = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    done = 0
    if progress:
        progress(0, n)
    with ThreadPoolExecutor(workers or worker_count()) as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="headstart-engine") as side:
        ahead = [pool.map(p.read, c) for c in chunks[:2]]
        for ci, chunk in enumerate(chunks):
            results = list(ahead[ci])
            if ci + 2 < len(chunks):
                ahead.append(pool.map(p.read, chunks[ci + 2]))
            p.take(chunk, results)
            ahead[ci] = None  # type: ignore[call-overload]
            p.advance(side)
            done += len(chunk)
            if progress:
                progress(done, n)
        p.finish()
    return p.result()


class _Pass:
    """One :func:`extract_features` pass: what was read, what waits for the engine (built
    while the files are read), the features so far."""

    def __init__(self, backbone: Backbone, images: Sequence["str | os.PathLike | Image.Image"],
                 cache: FeatureCache | None, batch_size: int, runtime: str,
                 engine: Engine | None, thumbs: bool) -> None:
        self.backbone, self.images, self.cache = backbone, images, cache
        self.batch_size, self.runtime, self.thumbs = batch_size, runtime, thumbs
        self.engine = engine
        self.key = backbone.identity() + (
            f"-{engine.variant}" if engine and engine.variant else "")
        self.dim, self.pre = backbone.num_features, backbone.preprocess
        self.out: dict[int, np.ndarray] = {}
        self.facts: list[FileFacts] = [FileFacts(None)] * len(images)
        self.skipped: list[Skipped] = []
        self.pending: list[tuple[int, np.ndarray, str | None]] = []
        self.computed = 0
        self.starting: Future[Engine] | None = None  # the engine, built while files are read

    def read(self, i: int) -> _Read:
        """Input ``i`` read once (on a reader thread)."""
        return _read_one(self.images[i], self.pre, self.cache, self.key, self.dim, self.thumbs)

    def take(self, chunk: range, results: list[_Read]) -> None:
        """File a chunk's reads: facts, skipped, cached ``(D,)`` features, pending inputs."""
        for i, r in zip(chunk, results):
            self.facts[i] = r.facts
            if r.reason is not None:
                self.skipped.append(Skipped(str(self.images[i]), r.reason))
            elif r.cached is not None:
                self.out[i] = r.cached
            else:
                self.pending.append((i, r.array, r.facts.digest))  # type: ignore[arg-type]

    def advance(self, side: ThreadPoolExecutor) -> None:
        """Start the engine in ``side`` once inputs wait, take it when built, run full batches."""
        if self.engine is None and self.pending and self.starting is None:
            # exporting or compiling takes seconds: meanwhile the threads read on
            root = self.cache.root if self.cache is not None else resolve_cache_dir()
            self.starting = side.submit(make_engine, self.backbone, root, self.runtime,
                                        np.stack([a for _, a, _ in self.pending[:8]]))
        if self.starting is not None and (self.starting.done()
                                          or len(self.pending) >= MAX_AHEAD):
            self.engine, self.starting = self.starting.result(), None
        while self.engine is not None and len(self.pending) >= self.batch_size:
            self.run(self.pending[:self.batch_size])
            self.pending = self.pending[self.batch_size:]

    def finish(self) -> None:
        """Wait for the engine if it is still being built, then run the remaining inputs."""
        if self.starting is not None:
            self.engine = self.starting.result()
        for s in range(0, len(self.pending), self.batch_size):
            self.run(self.pending[s:s + self.batch_size])

    def run(self, batch: list[tuple[int, np.ndarray, str | None]]) -> None:
        """Features ``(D,)`` of a batch of pending inputs, kept and written to the cache."""
        assert self.engine is not None
        for (i, _, digest), f in zip(batch, self.engine(np.stack([a for _, a, _ in batch]))):
            self.out[i] = f
            if self.cache is not None and digest is not None:
                self.cache.put(self.key, digest, f)
        self.computed += len(batch)

    def result(self) -> Features:
        """The :class:`Features`: ``X`` ``(M, D)`` float32 in input order, skipped by path."""
        index = np.asarray(sorted(self.out), dtype=int)
        X = (np.stack([self.out[i] for i in index]).astype(np.float32) if len(index)
             else np.zeros((0, self.dim), np.float32))
        self.skipped.sort(key=lambda s: s.path)
        if self.skipped:
            logger.info("%d image(s) skipped", len(self.skipped))
        return Features(X=X, index=index, skipped=self.skipped, computed=self.computed,
                        engine=self.engine, facts=self.facts)


def scan_images(images: Sequence["str | os.PathLike"], workers: int | None = None
                ) -> tuple[np.ndarray, list[Skipped], list[FileFacts]]:
    """One pass over files without a backbone: each is read and decoded once, to know it
    is usable. Returns the positions of those that decode, the others with reasons, and
    the :class:`FileFacts` of every input."""
    def one(src: "str | os.PathLike") -> _Read:
        return _read_one(src, None, None, "", 0, False)

    with ThreadPoolExecutor(workers or worker_count()) as pool:
        reads = list(pool.map(one, images))
    ok = np.asarray([i for i, r in enumerate(reads) if r.reason is None], dtype=int)
    bad = sorted((Skipped(str(images[i]), r.reason) for i, r in enumerate(reads)
                  if r.reason is not None), key=lambda s: s.path)
    return ok, bad, [r.facts for r in reads]
