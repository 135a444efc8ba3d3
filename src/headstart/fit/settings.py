"""The settings every stage of ``fit`` reads, in one typed record (see :class:`FitSettings`),
and the one way a stage reads features under them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import defaults
from ..backbone.build import Backbone
from ..backbone.features import FeatureCache, Features, extract_features
from ..backbone.runtime import Engine
from ..io.files import resolve_cache_dir
from .callbacks import CallbackList

__all__ = ["FitSettings"]


@dataclass(frozen=True)
class FitSettings:
    """What the stages of :meth:`headstart.Classifier.fit` share (the classifier's
    parameters; defaults in :mod:`headstart.defaults`).

    ``head``: the head kind (None: no head, plain features, no domain judgement: the
    label review reads data this way); ``seed``: data splits and initialisation; ``val_fraction``:
    the share of each class held out when no validation images are given; ``batch_size``
    and ``runtime``: how the backbone runs; ``cache`` / ``cache_dir``: the feature cache;
    ``callbacks``: who hears the events.
    """

    head: str | None = defaults.HEAD
    seed: int = 0
    val_fraction: float = defaults.VAL_FRACTION
    batch_size: int = 32
    runtime: str = defaults.RUNTIME
    cache: bool = True
    cache_dir: str | os.PathLike | None = None
    callbacks: CallbackList = field(default_factory=CallbackList, compare=False)

    @property
    def cache_root(self) -> Path:
        """The cache folder (engines, derived weights, fine-tuning checkpoints)."""
        return resolve_cache_dir(self.cache_dir)

    def feature_cache(self) -> FeatureCache | None:
        return FeatureCache(self.cache_dir) if self.cache else None

    def extract(self, backbone: Backbone, images: Sequence[Any], engine: Engine | None = None,
                thumbs: bool = False, progress: bool = False) -> Features:
        """Features of ``images`` ``(N, D)`` under ``backbone`` with these settings
        (``progress``: send the callbacks' progress events)."""
        return extract_features(backbone, list(images), self.feature_cache(), self.batch_size,
                                self.callbacks.progress if progress else None,
                                runtime=self.runtime, engine=engine, thumbs=thumbs)
