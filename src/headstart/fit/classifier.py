"""The classifier: a frozen pretrained backbone plus a new head, trained, saved, loaded.

Quickstart::

    clf = headstart.Classifier().fit("photos/")       # photos/<class>/<images>
    clf.predict(["new.jpg"])                            # -> ["giraffe"]
    clf.save("giraffe-model")                           # later: Classifier.load(...)

``fit`` runs the stages of :mod:`headstart.fit.stages` in order; a saved model is a directory
(see :mod:`headstart.io.bundle`) of ``headstart.json`` (classes, backbone spec and
preprocessing, head kind, the :class:`~headstart.fit.summary.TrainingSummary`),
``backbone.safetensors``, ``head.safetensors``, ``ood.safetensors`` (unknown rejection) and
``hashes.safetensors`` (content hashes of the training images, for leakage checks).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .. import defaults
from ..backbone.build import DEFAULT_BACKBONE, load_backbone
from ..backbone.features import ProgressFn
from ..backbone.runtime import RUNTIMES, Engine, int8_missing, make_engine
from ..errors import DataError, HeadstartError, ModelError
from ..heads import HEAD_KINDS
from ..io.files import resolve_cache_dir
from .calibration import OutOfDistribution
from .callbacks import Callback, CallbackList, Callbacks, Stopwatch
from .finetune import FinetuneConfig, is_rank_zero, parse_mode
from .health import Health
from .persist import Fitted, fp32_ir, read_model, write_model
from .pipeline import Trained, scratch, transfer
from .predictions import Predictions, answer
from .settings import FitSettings
from .stages import HeldOut
from .summary import TrainingSummary

__all__ = ["Classifier", "Predictions"]

logger = logging.getLogger(__name__)


class Classifier:
    """Image classifier: pretrained ``backbone`` (frozen) + a new ``head`` trained on its
    features.

    Args:
        backbone: backbone name (see ``headstart backbones``).
        head: ``auto`` (cross-validated choice), ``linear`` or ``mlp``.
        weights: optional local weights file for the backbone.
        seed: seed for data splits and head initialisation.
        val_fraction: fraction of each class held out for validation when no validation
            images are given.
        cache_dir: feature cache location (default: ``$HEADSTART_CACHE`` or the user
            cache); ``cache=False`` disables the cache.
        batch_size: images per backbone call.
        runtime: inference engine, ``auto`` (fastest available), ``openvino``,
            ``onnxruntime`` or ``torch`` (see :mod:`headstart.backbone.runtime`).
        int8: quantise the backbone to INT8 with NNCF, calibrated on the training images;
            the validation accuracy with and without INT8 is reported in ``summary_``.
        finetune: ``off``, ``auto``, ``all`` or ``last-N`` (see :mod:`headstart.fit.finetune`);
            the fine-tuned model is kept only if it beats the head-only model on the same
            validation images, and both accuracies are reported in ``summary_``.
        finetune_config: the other fine-tuning settings (:class:`FinetuneConfig`), also
            used by ``from_scratch``.
        from_scratch: train a compact CNN from random weights instead of transfer learning
            (see :mod:`headstart.fit.scratch`); ``backbone``, ``head`` and ``finetune`` are
            then ignored.
        unknown: label images unlike every training image ``unknown`` (see
            :mod:`headstart.fit.calibration`); probabilities are calibrated either way.

    Fitted attributes (all set by :meth:`fit` and by :meth:`load`): ``classes_``,
    ``backbone_``, ``head_`` (its ``kind`` says which), ``engine_`` (None until features
    are computed), ``temperature_``, ``ood_``, ``summary_`` (:class:`TrainingSummary`),
    ``health_``, ``skipped_``, ``train_digests_``, ``history_`` (fine-tuning epochs) and
    ``held_out_`` (held-out predictions for the report; None after :meth:`load`).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, head: str = defaults.HEAD,
                 weights: str | os.PathLike | None = None, seed: int = 0,
                 val_fraction: float = defaults.VAL_FRACTION, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 runtime: str = defaults.RUNTIME, int8: bool = False, finetune: str = "off",
                 finetune_config: FinetuneConfig | None = None,
                 from_scratch: bool = False, unknown: bool = True) -> None:
        self.backbone = backbone
        self.head = head
        self.weights = weights
        self.seed = seed
        self.val_fraction = val_fraction
        self.cache = cache
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.runtime = runtime
        self.int8 = int8
        self.finetune = finetune
        self.finetune_config = finetune_config
        self.from_scratch = from_scratch
        self.unknown = unknown

    def _check_params(self) -> None:
        """Raise :class:`HeadstartError` naming the first parameter out of range."""
        HEAD_KINDS.get(self.head, param="head")
        if self.runtime not in RUNTIMES:
            raise HeadstartError(param="runtime", expected=f"one of {', '.join(RUNTIMES)}",
                                 got=self.runtime)
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise DataError(param="val_fraction", expected="a number in (0, 1)",
                            got=self.val_fraction)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise HeadstartError(param="batch_size", expected="an integer >= 1",
                                 got=self.batch_size)
        parse_mode(self.finetune)
        if self.int8 and int8_missing():  # said before any work, not after the features
            raise HeadstartError(int8_missing(), param="int8")

    # ----------------------------------------------------------------- training
    def fit(self, data: str | os.PathLike | Sequence[Any], labels: Sequence[str] | None = None,
            *, val: str | os.PathLike | None = None,
            callbacks: Callback | Sequence[Callback] | None = None,
            unlabelled: str | os.PathLike | Sequence[Any] | None = None) -> "Classifier":
        """Train the head on frozen features (or a network from scratch).

        Args:
            data: a dataset folder or CSV (see :func:`headstart.io.dataset.load_dataset`),
                or a sequence of image paths / PIL images when ``labels`` is given.
            labels: class name of each image in ``data``.
            val: validation folder; without one (and without a split in ``data``) a
                stratified ``val_fraction`` is held out to measure accuracy, then the head
                is refitted on all images.
            callbacks: a :class:`~headstart.fit.callbacks.Callback` or a list of them
                (stages, feature-extraction progress, epochs; see
                :mod:`headstart.fit.callbacks`).
            unlabelled: a folder of unlabelled images (searched recursively; its folder
                names are never read as labels) or their paths: the head learns from them
                too where that does not lower the cross-validated accuracy (see
                :mod:`headstart.fit.unlabelled`); ``summary_.unlabelled`` says what was
                done.
        """
        self._check_params()
        if unlabelled is not None and self.from_scratch:
            raise HeadstartError(param="unlabelled", expected="no unlabelled images when "
                                 "training from scratch (they help the head on frozen "
                                 "features)", got=str(unlabelled))
        settings = self._settings(callbacks)
        if self.from_scratch:
            trained = scratch(data, labels, val, self.finetune_config, settings)
        else:
            plain = load_backbone(self.backbone, self.weights, cache_dir=self.cache_dir)
            cfg = replace(self.finetune_config or FinetuneConfig(), mode=self.finetune) \
                if self.finetune != "off" else None
            trained = transfer(data, labels, val, plain, settings, cfg, self.int8,
                               unlabelled)
        self._set_fitted(trained)
        logger.info("trained %s head: val accuracy %.4f", trained.fitted.head.kind,
                    trained.fitted.val_accuracy)
        return self

    def _settings(self, callbacks: Callback | Sequence[Callback] | None = None
                  ) -> FitSettings:
        """The settings the stages share, from the parameters (and a stopwatch)."""
        listed = [] if callbacks is None else \
            [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        return FitSettings(self.head, self.seed, self.val_fraction, self.batch_size,
                           self.runtime, self.cache, self.cache_dir,
                           CallbackList([*listed, Stopwatch()]))

    def _set_fitted(self, t: Trained) -> None:
        """Every fitted attribute, in one place (see the class docstring)."""
        self.classes_ = list(t.usable.classes)
        self.backbone_ = t.backbone
        self.head_ = t.fitted.head
        self.engine_ = t.engine
        self.temperature_ = t.calibrated.temperature
        self.ood_: OutOfDistribution | None = t.calibrated.ood
        self.summary_: TrainingSummary = t.summary
        self.health_ = t.usable.health
        self.skipped_ = t.usable.skipped
        self.train_digests_ = t.usable.train_digests
        self.history_ = t.history
        self.held_out_: HeldOut | None = t.calibrated.held_out

    # --------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise ModelError("this Classifier is not fitted yet; call fit() or load()")

    def predict_images(self, images: Sequence[Any], progress: ProgressFn | None = None,
                       thumbs: bool = False) -> Predictions:
        """Predict paths or PIL images; unreadable files are skipped and reported.

        ``thumbs``: also keep each file's thumbnail in ``Predictions.facts`` (near-duplicate
        checks of :func:`headstart.insight.evaluate.evaluate`)."""
        self._check_fitted()
        settings = self._settings([Callbacks(progress)] if progress else None)
        feats = settings.extract(self.backbone_, images, self.engine_, thumbs, progress=True)
        self.engine_ = feats.engine or self.engine_
        sources = [images[i] if isinstance(images[i], Image.Image) else str(images[i])
                   for i in feats.index]
        pred = answer(self.head_, self.temperature_, self.ood_, self.classes_, self.unknown,
                      feats.X, sources, feats.skipped)
        pred.facts = feats.facts
        return pred

    def predict_arrays(self, batch: np.ndarray, sources: Sequence[str] | None = None
                       ) -> Predictions:
        """Predict ``(N, S, S, 3)`` uint8 images already decoded, resized and cropped by
        :func:`headstart.backbone.features.prepare_image` (for servers: decode once, batch here)."""
        self._check_fitted()
        if self.engine_ is None:
            self.engine_ = make_engine(self.backbone_, resolve_cache_dir(self.cache_dir),
                                       self.runtime, sample=batch[:8])
        X = self.engine_(np.ascontiguousarray(batch, dtype=np.uint8))
        return answer(self.head_, self.temperature_, self.ood_, self.classes_, self.unknown, X,
                      list(sources) if sources is not None else [""] * len(X), [])

    def _all_readable(self, images: Sequence[Any]) -> Predictions:
        pred = self.predict_images(images)
        if pred.skipped:
            bad = "; ".join(f"{s.path}: {s.reason}" for s in pred.skipped[:3])
            raise DataError(f"{len(pred.skipped)} image(s) cannot be read: {bad}")
        return pred

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:
        """Calibrated class probabilities ``(N, K)`` for N paths or PIL images.

        Raises:
            DataError: an image cannot be read (use :meth:`predict_images` to skip those).
        """
        return self._all_readable(images).proba

    def predict(self, images: Sequence[Any]) -> list[str]:
        """Predicted class names (or ``unknown``) for N paths or PIL images."""
        return self._all_readable(images).labels

    # ------------------------------------------------------------ save and load
    def save(self, path: str | os.PathLike, extra: Callable[[Path], None] | None = None
             ) -> Path:
        """Write the model directory atomically; replaces an existing headstart model.
        In the other processes of a distributed run nothing is written.

        Args:
            extra: ``extra(folder)`` adds files (a report) to the new folder before it is
                moved into place.

        Raises:
            ModelError: ``path`` exists and is not a headstart model or empty folder, holds
                files of its own, or cannot be written (nothing is changed then).
        """
        self._check_fitted()
        if not is_rank_zero():
            logger.info("not rank 0: model not written")
            return Path(path)
        int8 = self._int8_engine()
        fitted = Fitted(self.classes_, self.backbone_, self.head_, self.temperature_,
                        self.ood_, self.summary_, self.train_digests_, self.history_, int8)
        return write_model(path, fitted, fp32_ir(self.backbone_, self.engine_, self.cache_dir),
                           extra)

    @classmethod
    def load(cls, path: str | os.PathLike, cache: bool = True,
             cache_dir: str | os.PathLike | None = None, runtime: str = "auto",
             unknown: bool = True) -> "Classifier":
        """Load a model directory written by :meth:`save`, every file checked against the
        digest recorded at save and every field against what the model needs.

        Raises:
            ModelError: missing directory or files, not a headstart model, a changed or
                corrupt file, or metadata that does not fit the arrays (the message names
                the field).
        """
        f = read_model(path, cache_dir)
        clf = cls(backbone=f.backbone.name, head=f.head.kind, cache=cache,
                  cache_dir=cache_dir, runtime=runtime, unknown=unknown,
                  int8=f.int8 is not None)
        clf.classes_, clf.backbone_, clf.head_ = f.classes, f.backbone, f.head
        clf.engine_ = f.int8
        clf.temperature_, clf.ood_, clf.summary_ = f.temperature, f.ood, f.summary
        clf.health_ = f.summary.health or Health("", "", {})
        clf.skipped_ = []
        clf.train_digests_, clf.history_ = f.train_digests, f.history
        clf.held_out_ = None
        return clf

    def _int8_engine(self) -> Engine | None:
        engine = self.engine_
        return engine if engine is not None and engine.variant.startswith("int8") else None
