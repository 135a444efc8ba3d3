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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from .. import defaults
from ..backbone.build import DEFAULT_BACKBONE, Backbone, load_backbone
from ..fit.calibration import OutOfDistribution
from ..io.dataset import Skipped
from ..fit.domain import domain_gap, explain
from ..errors import DataError, HeadstartError, ModelError
from ..backbone.features import FeatureCache, Features, FileFacts, ProgressFn, extract_features, \
    resolve_cache_dir
from ..fit.finetune import FinetuneConfig, finetune_stage, is_rank_zero, parse_mode, skip_reason
from ..fit.health import Health
from ..heads.linear import HEADS, softmax
from ..fit.persist import Fitted, fp32_ir, read_model, write_model
from ..backbone.runtime import RUNTIMES, Engine, make_engine
from ..fit.scratch import scratch_stage
from ..fit.stages import (Callbacks, FittedHead, HeldOut, Stopwatch, Usable, calibrate, fit_head,
                     holdout_accuracy, quantize, read_data)
from ..fit.summary import TrainingSummary

__all__ = ["Classifier", "Predictions"]

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass
class Predictions:
    """Predictions for the usable images among the inputs.

    Attributes:
        sources: the M usable inputs, in input order (paths as strings).
        proba: ``(M, K)`` class probabilities.
        labels: the M predicted class names.
        classes: the K class names (column order of ``proba``).
        skipped: inputs that could not be decoded, with reasons.
        logits: ``(M, K)`` head outputs before calibration (``proba`` is
            ``softmax(logits / temperature)``).
        features: ``(M, D)`` backbone features.
        ood_score: ``(M,)`` unlikeness to the training images; ``rejected``: ``(M,)``
            whether it is above the model's threshold (the label is then ``unknown``).
        facts: ``(N,)`` what the pass over each input file learned (hash, header,
            thumbnail), for every input in input order.
    """

    sources: list[str]
    proba: np.ndarray
    labels: list[str]
    classes: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    logits: np.ndarray | None = None
    ood_score: np.ndarray | None = None
    rejected: np.ndarray | None = None
    features: np.ndarray | None = None
    facts: list[FileFacts] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many images were predicted as each class (and as ``unknown``)."""
        names = self.classes + ([UNKNOWN] if UNKNOWN in self.labels else [])
        return {c: self.labels.count(c) for c in names}


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
        if self.head not in HEADS:
            raise HeadstartError(f"head: expected one of {', '.join(HEADS)}, got {self.head!r}")
        if self.runtime not in RUNTIMES:
            raise HeadstartError(f"runtime: expected one of {', '.join(RUNTIMES)}, "
                                 f"got {self.runtime!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise DataError(f"val_fraction: expected a number in (0, 1), "
                            f"got {self.val_fraction!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise HeadstartError(f"batch_size: expected an integer >= 1, "
                                 f"got {self.batch_size!r}")
        parse_mode(self.finetune)

    # ----------------------------------------------------------------- training
    def fit(self, data: str | os.PathLike | Sequence[Any], labels: Sequence[str] | None = None,
            *, val: str | os.PathLike | None = None,
            callbacks: Callbacks | None = None) -> "Classifier":
        """Train the head on frozen features (or a network from scratch).

        Args:
            data: a dataset folder or CSV (see :func:`headstart.io.dataset.load_dataset`), or a
                sequence of image paths / PIL images when ``labels`` is given.
            labels: class name of each image in ``data``.
            val: validation folder; without one (and without a split in ``data``) a
                stratified ``val_fraction`` is held out to measure accuracy, then the head
                is refitted on all images.
            callbacks: progress of feature extraction and fine-tuning epochs.
        """
        t0, clock = time.perf_counter(), Stopwatch()
        self._check_params()
        cb = callbacks or Callbacks()
        if self.from_scratch:
            return self._fit_scratch(data, labels, val, cb, t0)
        plain = load_backbone(self.backbone, self.weights, cache_dir=self.cache_dir)
        usable = read_data(data, labels, val, plain, self._cache(), self.batch_size,
                           self.runtime, cb, head=self.head)
        assert usable.X is not None and usable.backbone is not None
        clock.lap("read_data")
        backbone = usable.backbone
        gap = domain_gap(backbone, usable.X[usable.is_train])
        if gap.level == "near" and backbone.taps:  # intermediate blocks pay far from ImageNet
            usable = replace(usable, X=backbone.final(usable.X), backbone=plain, engine=None)
            backbone = plain
        clock.lap("domain_gap")
        if gap.level == "far":
            logger.warning("these images look far from the backbone's pretraining photos "
                           "(%s): transfer learning may not be the right tool; run "
                           "'headstart advise %s'", explain(gap),
                           usable.data_path or "DATA")
        # ImageNet's classes are features worth trying only for ImageNet-like images
        imagenet = backbone.imagenet_head if gap.level == "near" else None
        fitted = fit_head(usable.X, usable.y, usable.is_train, self.head, self.seed,
                          self.val_fraction, imagenet, backbone.tap_widths)
        clock.lap("fit_head")
        X, engine, history = usable.X, usable.engine, []
        tuned = ft = None
        if self.finetune != "off":
            cfg = replace(self.finetune_config or FinetuneConfig(), mode=self.finetune)
            head_only = fitted.val_accuracy
            far = gap.level == "far"
            if skip_reason(cfg, usable.y, usable.is_train, far) is None:  # on its rows
                head_only, _ = holdout_accuracy(fitted.head, usable.X, usable.y,
                                                usable.is_train, self.seed, self.val_fraction)
            ft = finetune_stage(plain, usable.paths, usable.y, usable.is_train,
                                head_only, cfg, resolve_cache_dir(self.cache_dir),
                                self._features_under, self.seed, self.val_fraction, cb.epoch,
                                far)
            history = ft.history
            if ft.backbone is not None:
                backbone, tuned = ft.backbone, ft
                where = ("validation split" if (~usable.is_train).any() else
                         f"held-out {self.val_fraction:.0%} of each class, not trained on")
                fitted = FittedHead(ft.head, {}, ft.val_accuracy, ft.val_images,
                                    where + ", fine-tuned")
                feats = self._extract(backbone, usable.paths, None, None)
                X, engine = feats.X, feats.engine
            clock.lap("finetune")
        int8 = None
        if self.int8:
            q = quantize(backbone, usable, fitted, self.head, self._cache(),
                         resolve_cache_dir(self.cache_dir), self.batch_size, self.runtime,
                         self.seed, self.val_fraction, cb.progress, imagenet)
            X, engine, fitted, int8 = q.X, q.engine, q.fitted, q.summary
            clock.lap("quantize")
        calibrated = calibrate(fitted.head, X, usable, tuned is not None and not self.int8,
                               self.seed, self.val_fraction)
        clock.lap("calibrate")
        summary = self._summary(usable, fitted, backbone.name, t0,
                                runtime=engine.name if engine else "cache",
                                int8=int8, finetune=ft.summary if ft else None,
                                domain_gap=gap, calibration=calibrated.calibration,
                                timings=clock.laps)
        self._set_fitted(usable, backbone, fitted, engine, calibrated, summary, history)
        logger.info("trained %s head: val accuracy %.4f", fitted.head.kind,
                    fitted.val_accuracy)
        return self

    def _fit_scratch(self, data: Any, labels: Sequence[str] | None, val: Any, cb: Callbacks,
                     t0: float) -> "Classifier":
        usable = read_data(data, labels, val, None, None, callbacks=cb)
        cfg = self.finetune_config or FinetuneConfig(lr=defaults.SCRATCH_LR, augment="none")
        stage = scratch_stage(usable.paths, usable.y, usable.is_train, len(usable.classes),
                              cfg, resolve_cache_dir(self.cache_dir), self._features_under,
                              self.seed, self.val_fraction, on_epoch=cb.epoch)
        source = ("validation split" if (~usable.is_train).any() else
                  f"held-out {self.val_fraction:.0%} of each class")
        fitted = FittedHead(stage.head, {}, stage.val_accuracy, stage.val_images, source)
        feats = self._extract(stage.backbone, usable.paths, None, None)
        calibrated = calibrate(stage.head, feats.X, usable, True, self.seed, self.val_fraction)
        summary = self._summary(usable, fitted, stage.backbone.name, t0, runtime="torch",
                                from_scratch=stage.summary,
                                calibration=calibrated.calibration)
        self._set_fitted(usable, stage.backbone, fitted, feats.engine, calibrated, summary,
                         stage.history)
        return self

    def _summary(self, usable: Usable, fitted: FittedHead, backbone_name: str, t0: float,
                 **stages: Any) -> TrainingSummary:
        """The training record: common facts, then ``stages`` (absent ones stay None)."""
        counts = np.bincount(usable.train_labels, minlength=len(usable.classes))
        return TrainingSummary(
            headstart_version=__version__, trained_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            data=usable.source, data_path=usable.data_path, layout=usable.layout,
            backbone=backbone_name,
            head=fitted.head.kind, head_cv_accuracy=fitted.cv_scores,
            head_settings=fitted.head.chosen(),
            train_counts={c: int(n) for c, n in zip(usable.classes, counts)},
            skipped=len(usable.skipped),
            features_computed=usable.computed if not self.from_scratch else 0,
            features_cached=usable.cached if not self.from_scratch else 0,
            health=usable.health, val_images=fitted.val_images,
            val_accuracy=fitted.val_accuracy if fitted.val_images else None,
            val_source=fitted.val_source, **stages,
            seconds=round(time.perf_counter() - t0, 2))

    def _set_fitted(self, usable: Usable, backbone: Backbone, fitted: FittedHead,
                    engine: Engine | None, calibrated: Any, summary: TrainingSummary,
                    history: list[dict[str, float]]) -> None:
        """Every fitted attribute, in one place (see the class docstring)."""
        self.classes_ = list(usable.classes)
        self.backbone_ = backbone
        self.head_ = fitted.head
        self.engine_ = engine
        self.temperature_ = calibrated.temperature
        self.ood_: OutOfDistribution | None = calibrated.ood
        self.summary_ = summary
        self.health_ = usable.health
        self.skipped_ = usable.skipped
        self.train_digests_ = usable.train_digests
        self.history_ = history
        self.held_out_: HeldOut | None = calibrated.held_out

    def _cache(self) -> FeatureCache | None:
        return FeatureCache(self.cache_dir) if self.cache else None

    def _extract(self, backbone: Backbone, images: list[Any], progress: ProgressFn | None,
                 engine: Engine | None, thumbs: bool = False) -> Features:
        return extract_features(backbone, images, self._cache(), self.batch_size, progress,
                                runtime=self.runtime, engine=engine, thumbs=thumbs)

    def _features_under(self, backbone: Backbone, images: list[Any]) -> np.ndarray:
        """``(N, D)`` features of ``images`` under another backbone (fine-tuning stages)."""
        return self._extract(backbone, images, None, None).X

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
        feats = self._extract(self.backbone_, list(images), progress, self.engine_, thumbs)
        self.engine_ = feats.engine or self.engine_
        sources = [images[i] if isinstance(images[i], Image.Image) else str(images[i])
                   for i in feats.index]
        pred = self._answers(feats.X, sources, feats.skipped)
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
        return self._answers(X, list(sources) if sources is not None else [""] * len(X), [])

    def _answers(self, X: np.ndarray, sources: list[Any], skipped: list[Skipped]
                 ) -> Predictions:
        """Calibrated probabilities, unknown scores and labels from ``(M, D)`` features."""
        logits = self.head_.decision_function(X) if len(X) else \
            np.zeros((0, len(self.classes_)), np.float32)
        proba = softmax(logits, self.temperature_)
        if self.ood_ is None:  # a model saved without an unknown detector
            score, rejected = np.zeros(len(proba), np.float32), np.zeros(len(proba), bool)
        else:
            score = self.ood_.score(X)
            rejected = score > self.ood_.threshold_ if self.unknown else \
                np.zeros(len(proba), bool)
        labels = [UNKNOWN if r else self.classes_[int(i)]
                  for i, r in zip(np.argmax(proba, axis=1), rejected)]
        return Predictions(sources, proba, labels, list(self.classes_), skipped, logits, score,
                           rejected, X)

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
