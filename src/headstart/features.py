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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ._fs import digest_bytes
from .backbones import Backbone, Preprocess
from .data import Skipped
from .decode import UnreadableImage, check_pixels, load_bytes, open_image, read_image
from .runtime import Engine, make_engine

__all__ = ["FeatureCache", "Features", "extract_features", "normalize", "prepare_image",
           "preprocess_image", "readable", "resolve_cache_dir"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
             "nearest": Image.NEAREST, "lanczos": Image.LANCZOS, "box": Image.BOX}


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$HEADSTART_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("headstart", appauthor=False))


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
    target = int(pre.size / pre.crop_pct)
    img = source if isinstance(source, Image.Image) else open_image(source)
    if img.format == "JPEG" and not isinstance(source, Image.Image):
        check_pixels(img)  # on the full size, before draft mode shrinks it
        img.draft("RGB", (target, target))
    rgb = read_image(img)
    box = _crop_box(*rgb.size, pre)
    out = rgb.resize((pre.size, pre.size), _RESAMPLE.get(pre.interpolation, Image.BICUBIC),
                     box=box)
    return np.asarray(out, dtype=np.uint8)


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


class FeatureCache:
    """Feature vectors on disk: ``<root>/features/<backbone identity>/<hh>/<hash>.npy``."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = resolve_cache_dir(root)

    def _path(self, key: str, digest: str) -> Path:
        return self.root / "features" / key / digest[:2] / f"{digest}.npy"

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
    """Features of the usable images.

    Attributes:
        X: ``(M, D)`` float32 features, M <= N.
        index: ``(M,)`` positions of those images in the input sequence.
        skipped: the inputs that could not be decoded, with reasons.
        computed: how many of the M needed a backbone forward pass (the rest were cached).
        engine: the inference engine used (reuse it for the next call), None if unused.
    """

    X: np.ndarray
    index: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    computed: int = 0
    engine: Engine | None = None


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def extract_features(backbone: Backbone, images: Sequence["str | os.PathLike | Image.Image"],
                     cache: FeatureCache | None = None, batch_size: int = 32,
                     progress: ProgressFn | None = None, workers: int | None = None,
                     runtime: str = "auto", engine: Engine | None = None) -> Features:
    """Pooled features of ``images`` (paths or PIL images) under ``backbone``.

    Images are decoded by ``workers`` threads while the engine (see
    :mod:`headstart.runtime`; ``engine`` reuses one, else ``runtime`` picks one) works on
    the previous batch. Unreadable files are skipped and listed in ``Features.skipped``;
    the result does not depend on ``workers`` or ``batch_size``. PIL images are never
    cached (they have no file to hash).
    """
    n = len(images)
    key = backbone.identity() + (f"-{engine.variant}" if engine and engine.variant else "")
    out: dict[int, np.ndarray] = {}
    skipped: list[Skipped] = []
    digests: dict[int, str] = {}
    todo: list[int] = []
    for i, src in enumerate(images):
        if cache is not None and not isinstance(src, Image.Image):
            try:
                digests[i] = file_hash(src)
            except UnreadableImage as e:
                skipped.append(Skipped(str(src), str(e)))
                continue
            hit = cache.get(key, digests[i])
            if hit is not None and hit.shape == (backbone.num_features,):
                out[i] = hit
                continue
        todo.append(i)
    done = n - len(todo)
    if progress:
        progress(done, n)
    failed = 0

    def load(i: int) -> np.ndarray | None:
        try:
            return prepare_image(images[i], backbone.preprocess)
        except UnreadableImage as e:
            skipped.append(Skipped(str(images[i]), str(e)))
            return None

    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(workers or _default_workers()) as pool:
        pending = [pool.map(load, b) for b in batches[:2]]
        for bi, batch in enumerate(batches):
            arrays = list(pending[bi])
            if bi + 2 < len(batches):
                pending.append(pool.map(load, batches[bi + 2]))
            keep = [i for i, a in zip(batch, arrays) if a is not None]
            failed += len(batch) - len(keep)
            if keep:
                x = np.stack([a for a in arrays if a is not None])
                if engine is None:
                    root = cache.root if cache is not None else resolve_cache_dir()
                    engine = make_engine(backbone, root, runtime, sample=x[:8])
                for i, f in zip(keep, engine(x)):
                    out[i] = f
                    if cache is not None and i in digests:
                        cache.put(key, digests[i], f)
            done += len(batch)
            if progress:
                progress(done, n)
    index = np.asarray(sorted(out), dtype=int)
    X = (np.stack([out[i] for i in index]).astype(np.float32) if len(index)
         else np.zeros((0, backbone.num_features), np.float32))
    skipped.sort(key=lambda s: s.path)
    if skipped:
        logger.info("%d image(s) skipped", len(skipped))
    return Features(X=X, index=index, skipped=skipped, computed=len(todo) - failed,
                    engine=engine)


def readable(images: Sequence["str | os.PathLike"], workers: int | None = None
             ) -> tuple[np.ndarray, list[Skipped]]:
    """Positions of the images that decode, and the others with reasons (decodes each)."""
    def check(src: "str | os.PathLike") -> str | None:
        try:
            read_image(src)
        except UnreadableImage as e:
            return str(e)
        return None

    with ThreadPoolExecutor(workers or _default_workers()) as pool:
        reasons = list(pool.map(check, images))
    ok = np.asarray([i for i, r in enumerate(reasons) if r is None], dtype=int)
    return ok, sorted((Skipped(str(images[i]), r) for i, r in enumerate(reasons)
                       if r is not None), key=lambda s: s.path)
