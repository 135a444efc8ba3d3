"""The classifier bundle: a frozen pretrained backbone plus a new head, trained, saved, loaded.

Quickstart::

    clf = headstart.Classifier().fit("photos/")       # photos/<class>/<images>
    clf.predict(["new.jpg"])                            # -> ["giraffe"]
    clf.save("giraffe-model")                           # later: Classifier.load(...)

A saved model is a directory of ``headstart.json`` (classes, backbone spec, preprocessing,
head kind, training summary with the data health findings), ``backbone.safetensors``,
``head.safetensors``, ``ood.safetensors`` (unknown rejection) and ``hashes.safetensors``
(content hashes of the training images, to detect test images that leak from training);
never pickle. It is written to a temporary sibling directory and renamed into place, so a crash
never leaves a half-written model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from . import __version__
from .bundle import expect_shapes, read_arrays, read_meta, verified_digest, write_bundle
from .backbones import (DEFAULT_BACKBONE, Backbone, backbone_from_file, domain_gap,
                        load_backbone)
from .data import (Dataset, ImageSet, Skipped, check_classes, drop_unreadable_classes,
                   load_dataset, stratified_split)
from .errors import DataError, ModelError
from .features import (FeatureCache, Features, ProgressFn, extract_features, prepare_image,
                       readable, resolve_cache_dir)
from .calibration import OutOfDistribution, fit_honesty, softmax
from .health import dataset_health, inspect_files
from .finetune import FinetuneConfig, finetune_stage, split_rows, write_metrics_csv
from .scratch import scratch_stage
from .runtime import int8_engine, make_engine, openvino_ir_engine
from .heads import AutoHead, head_from_state, make_head

__all__ = ["Classifier", "Predictions"]

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
INT8_XML = "backbone.int8.xml"
HASHES_FILE = "hashes.safetensors"  # content hashes of the training images (leakage checks)


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
            ``onnxruntime`` or ``torch`` (see :mod:`headstart.runtime`).
        int8: quantise the backbone to INT8 with NNCF, calibrated on the training images;
            the validation accuracy with and without INT8 is reported in ``summary_``.
        finetune: ``off``, ``auto``, ``all`` or ``last-N`` (see :mod:`headstart.finetune`);
            the fine-tuned model is kept only if it beats the head-only model on the same
            validation images, and both accuracies are reported in ``summary_``.
        finetune_config: the other fine-tuning settings (:class:`FinetuneConfig`), also
            used by ``from_scratch``.
        from_scratch: train a compact CNN from random weights instead of transfer learning
            (see :mod:`headstart.scratch`); ``backbone``, ``head`` and ``finetune`` are
            then ignored.
        unknown: label images unlike every training image ``unknown`` (see
            :mod:`headstart.calibration`); probabilities are calibrated either way.

    Fitted attributes: ``classes_``, ``backbone_``, ``head_``, ``summary_``, ``skipped_``,
    ``health_`` (:class:`headstart.health.Health` of the training data), ``train_digests_``.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, head: str = "auto",
                 weights: str | os.PathLike | None = None, seed: int = 0,
                 val_fraction: float = 0.2, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 32,
                 runtime: str = "auto", int8: bool = False, finetune: str = "off",
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

    # ----------------------------------------------------------------- training
    def fit(self, data: str | os.PathLike | Sequence[Any], labels: Sequence[str] | None = None,
            *, val: str | os.PathLike | None = None, progress: ProgressFn | None = None,
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> "Classifier":
        """Train the head on frozen features.

        Args:
            data: a dataset folder or CSV (see :func:`headstart.data.load_dataset`), or a
                sequence of image paths / PIL images when ``labels`` is given.
            labels: class name of each image in ``data``.
            val: validation folder; without one (and without a split in ``data``) a
                stratified ``val_fraction`` is held out to measure accuracy, then the head
                is refitted on all images.
            progress: ``progress(done, total)`` called during feature extraction.
            on_epoch: called with each fine-tuning epoch's metrics.
        """
        t0 = time.perf_counter()
        if self.val_fraction <= 0 or self.val_fraction >= 1:
            raise DataError(f"val_fraction: expected a number in (0, 1), got "
                            f"{self.val_fraction}")
        dataset = self._dataset(data, labels, val)
        if self.from_scratch:
            return self._fit_scratch(dataset, data, t0, on_epoch)
        self.backbone_ = load_backbone(self.backbone, self.weights)
        train_items = list(dataset.train.paths)
        val_items = list(dataset.val.paths) if dataset.val is not None else []
        self.engine_ = None
        items = train_items + val_items
        facts = inspect_files(items)
        feats = self._features(items, progress)
        self.skipped_ = dataset.skipped + feats.skipped
        self._check_health(dataset, data, labels, facts, feats.X, feats.index)
        y_all = np.asarray(dataset.train.labels + (dataset.val.labels if dataset.val else []))
        self.classes_, y, keep, dropped = drop_unreadable_classes(
            dataset.train, y_all[feats.index], feats.index < len(train_items))
        self.skipped_ += dropped
        X, index = feats.X[keep], feats.index[keep]
        y, is_train = y[keep], (index < len(train_items))
        ytr = y[is_train]
        check_classes(ytr, self.classes_, f"{data} (after skipping unreadable files)")
        gap = domain_gap(self.backbone_, X[is_train])
        if gap["level"] == "far":
            logger.warning("these images look far from the backbone's pretraining photos "
                           "(feature distance %.1f, ImageNet confidence %.2f): transfer "
                           "learning may not be the right tool; run 'headstart advise %s'",
                           gap["feature_distance"] or float("nan"),
                           gap["imagenet_max_prob"] or float("nan"), data)
        usable = [items[i] for i in index]
        fitted = self._fit_validate(X, y, is_train)
        self.history_: list[dict[str, float]] = []
        self.is_global_zero_ = True
        ft_summary = None
        if self.finetune != "off":
            cfg = replace(self.finetune_config or FinetuneConfig(), mode=self.finetune)
            cfg.check()
            stage = finetune_stage(
                self.backbone_, usable, y, is_train, fitted[2], cfg, resolve_cache_dir(self.cache_dir),
                lambda bb, paths: self._features(paths, None, bb).X, self.seed,
                self.val_fraction, on_epoch)
            ft_summary, self.history_ = stage.summary, stage.history
            self.is_global_zero_ = stage.is_global_zero
            if stage.backbone is not None:
                self.backbone_, self.engine_, self.head_kind_ = stage.backbone, None, "linear"
                fitted = (stage.head, {}, stage.val_accuracy, stage.summary["val_images"],
                          fitted[4] + ", fine-tuned")
        int8_summary = None
        if self.int8:
            fp32_acc = fitted[2]
            calibration = [p for p, t in zip(usable, is_train) if t]
            step = max(1, len(calibration) // 300)
            self.engine_ = int8_engine(
                self.backbone_, resolve_cache_dir(self.cache_dir),
                np.stack([prepare_image(p, self.backbone_.preprocess)
                          for p in calibration[::step][:300]]))
            feats8 = self._features(usable, progress)
            fitted = self._fit_validate(feats8.X, y, is_train)
            drop = fp32_acc - fitted[2]
            int8_summary = {"variant": self.engine_.variant, "val_accuracy_fp32": fp32_acc,
                            "val_accuracy_int8": fitted[2], "drop": drop}
            if drop > 0.005:
                logger.warning("INT8 lowers validation accuracy by %.1f points (%.4f -> %.4f); "
                               "consider training without --int8", 100 * drop, fp32_acc,
                               fitted[2])
        self.head_, chooser, val_acc, n_val, val_source = fitted
        # the final head saw every training row, except a fine-tuned one (not refit by int8)
        tuned = bool(ft_summary and ft_summary.get("kept") == "finetuned")
        if self.int8:
            Xf = feats8.X
        elif tuned:
            Xf = self._features(usable, None).X
        else:
            Xf = X
        calib = self._fit_honesty(Xf, y, is_train, tuned and not self.int8, usable)
        self.summary_ = self._summary(
            str(data) if labels is None else f"{len(data)} images", dataset.layout, ytr, t0,
            head_cv_accuracy=chooser, val_images=n_val, val_accuracy=val_acc,
            val_source=val_source, features_computed=feats.computed,
            features_cached=int(len(feats.index) - feats.computed),
            runtime=self.engine_.name if self.engine_ is not None else "cache",
            int8=int8_summary, finetune=ft_summary, domain_gap=gap, calibration=calib)
        logger.info("trained %s head: val accuracy %.4f", self.head_kind_, val_acc)
        return self

    def _check_health(self, dataset: Dataset, data: Any, labels: Any, facts: list[Any],
                      X: np.ndarray | None, index: np.ndarray | None) -> None:
        """``health_`` of the training data and ``train_digests_`` (see
        :func:`headstart.health.dataset_health`)."""
        self.health_, self.train_digests_ = dataset_health(
            dataset, None if labels is not None else data, facts, self.skipped_, X, index)

    def _fit_honesty(self, X: np.ndarray, y: np.ndarray, is_train: np.ndarray,
                     held_out: bool, paths: list[Any]) -> dict[str, Any]:
        """Fit ``temperature_`` and ``ood_`` on the final features ``X`` of all rows.

        ``held_out``: the head was trained without the stratified held-out fold (fine-tuned
        and from-scratch models), so that fold serves as validation when there is no split.
        """
        train_rows, val_rows = np.flatnonzero(is_train), np.flatnonzero(~is_train)
        if held_out and not len(val_rows):
            train_rows, val_rows = split_rows(y, is_train, self.val_fraction, self.seed)
        self.temperature_, self.ood_, info, rows, logits = fit_honesty(
            self.head_, self.head_kind_, X, y, train_rows, val_rows, self.seed)
        self.val_report_ = {"sources": [paths[i] for i in rows], "y": y[rows],
                            "logits": logits, "what": info["fitted_on"],
                            "rejected": self.ood_.score(X[rows]) > self.ood_.threshold_}
        return info

    def _fit_scratch(self, dataset: Dataset, data: Any, t0: float,
                     on_epoch: Callable[[dict[str, float]], None] | None) -> "Classifier":
        items = list(dataset.train.paths) + (list(dataset.val.paths) if dataset.val else [])
        y_all = np.asarray(dataset.train.labels + (dataset.val.labels if dataset.val else []))
        facts = inspect_files(items)
        ok, bad = readable(items)
        self.skipped_ = dataset.skipped + bad
        self._check_health(dataset, data, None, facts, None, None)
        self.classes_, y_ok, keep, dropped = drop_unreadable_classes(
            dataset.train, y_all[ok], ok < len(dataset.train))
        self.skipped_ += dropped
        ok = ok[keep]
        y_all = np.full(len(items), -1)
        y_all[ok] = y_ok[keep]
        is_train = ok < len(dataset.train)
        check_classes(y_all[ok[is_train]], self.classes_,
                      f"{data} (after skipping unreadable files)")
        cfg = self.finetune_config or FinetuneConfig(lr=3e-3, augment="none")
        cfg.check()
        self.engine_ = None
        usable = [items[i] for i in ok]
        stage = scratch_stage(usable, y_all[ok], is_train, len(self.classes_),
                              cfg, resolve_cache_dir(self.cache_dir),
                              lambda bb, paths: self._features(paths, None, bb).X, self.seed,
                              self.val_fraction, on_epoch=on_epoch)
        self.backbone_, self.head_, self.head_kind_ = stage.backbone, stage.head, "linear"
        self.history_, self.is_global_zero_ = stage.history, stage.is_global_zero
        s = stage.summary
        calib = self._fit_honesty(self._features(usable, None).X, y_all[ok], is_train, True,
                                  usable)
        self.summary_ = self._summary(
            str(data), dataset.layout, y_all[ok[is_train]], t0, val_images=s["val_images"],
            val_accuracy=s["val_accuracy"],
            val_source="validation split" if (~is_train).any() else
            f"held-out {self.val_fraction:.0%} of each class",
            runtime="torch", from_scratch=s, calibration=calib)
        return self

    def _summary(self, data: str, layout: str, y_train: np.ndarray, t0: float,
                 **fields: Any) -> dict[str, Any]:
        """The training summary: common facts, then ``fields`` (absent stages are None)."""
        return {
            "headstart_version": __version__,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data": data, "data_path": os.path.abspath(data) if os.path.exists(data) else None,
            "layout": layout, "backbone": self.backbone_.name,
            "head": self.head_kind_, "head_cv_accuracy": {},
            "train_counts": {c: int(n) for c, n in zip(
                self.classes_, np.bincount(y_train, minlength=len(self.classes_)))},
            "skipped": len(self.skipped_), "features_computed": 0, "features_cached": 0,
            "health": self.health_.to_dict(limit=20),
            "int8": None, "finetune": None, "from_scratch": None, "domain_gap": None,
            **fields,
            "seconds": round(time.perf_counter() - t0, 2)}

    def _fit_validate(self, X: np.ndarray, y: np.ndarray, is_train: np.ndarray
                      ) -> tuple[Any, dict[str, float], float, int, str]:
        """Fit the head on the training rows and measure it on validation rows.

        Without validation rows, a stratified ``val_fraction`` of the training rows is held
        out to measure a probe head, then the head is refitted on all training rows.
        Returns ``(head, cv_scores, val_accuracy, n_val, how_measured)``.
        """
        Xtr, ytr, Xva, yva = X[is_train], y[is_train], X[~is_train], y[~is_train]
        if len(yva):
            head, chooser = self._fit_head(Xtr, ytr)
            return (head, chooser, float(np.mean(head.predict(Xva) == yva)), len(yva),
                    "validation split")
        tr, va = stratified_split(ytr, self.val_fraction, self.seed)
        if len(va) == 0:
            raise DataError("too few images to hold out a validation fold; "
                            "need at least 2 images in some class")
        probe, _ = self._fit_head(Xtr[tr], ytr[tr])
        val_acc = float(np.mean(probe.predict(Xtr[va]) == ytr[va]))
        head, chooser = self._fit_head(Xtr, ytr)
        return (head, chooser, val_acc, len(va),
                f"held-out {self.val_fraction:.0%} of each class, measured before the final "
                "refit on all training images")

    def _features(self, images: list[Any], progress: ProgressFn | None,
                  backbone: Backbone | None = None) -> Features:
        """Features under the fitted backbone (reusing its engine), or another one."""
        cache = FeatureCache(self.cache_dir) if self.cache else None
        if backbone is not None:
            return extract_features(backbone, images, cache, self.batch_size, progress,
                                    runtime=self.runtime)
        feats = extract_features(self.backbone_, images, cache, self.batch_size, progress,
                                 runtime=self.runtime, engine=getattr(self, "engine_", None))
        self.engine_ = feats.engine or getattr(self, "engine_", None)
        return feats

    def _dataset(self, data: Any, labels: Sequence[str] | None, val: Any) -> Dataset:
        if labels is None:
            return load_dataset(data, val)
        if len(labels) != len(data):
            raise DataError(f"labels: expected one per image ({len(data)}), got {len(labels)}")
        classes = sorted(set(map(str, labels)))
        train = ImageSet(list(data), [classes.index(str(lab)) for lab in labels], classes)
        check_classes(train.labels, train.classes, "labels")
        val_set = load_dataset(Path(val)).train if val is not None else None
        return Dataset(train=train, val=val_set, layout="in memory")

    def _fit_head(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, dict[str, float]]:
        head = make_head(self.head, self.seed).fit(X, y)
        if isinstance(head, AutoHead):
            self.head_kind_ = head.kind_
            return head.best_, head.cv_scores_
        self.head_kind_ = self.head
        score = getattr(head, "cv_score_", None)
        return head, ({self.head: score} if score is not None and score == score else {})

    # --------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise ModelError("this Classifier is not fitted yet; call fit() or load()")

    def predict_images(self, images: Sequence[Any], progress: ProgressFn | None = None
                       ) -> Predictions:
        """Predict paths or PIL images; unreadable files are skipped and reported."""
        self._check_fitted()
        feats = self._features(list(images), progress)
        sources = [images[i] if isinstance(images[i], Image.Image) else str(images[i])
                   for i in feats.index]
        return self._answers(feats.X, sources, feats.skipped)

    def predict_arrays(self, batch: np.ndarray, sources: Sequence[str] | None = None
                       ) -> Predictions:
        """Predict ``(N, S, S, 3)`` uint8 images already decoded, resized and cropped by
        :func:`headstart.features.prepare_image` (for servers: decode once, batch here)."""
        self._check_fitted()
        if getattr(self, "engine_", None) is None:
            self.engine_ = make_engine(self.backbone_, resolve_cache_dir(self.cache_dir),
                                       self.runtime, sample=batch[:8])
        X = self.engine_(np.ascontiguousarray(batch, dtype=np.uint8))
        return self._answers(X, list(sources) if sources is not None else [""] * len(X), [])

    def _answers(self, X: np.ndarray, sources: list[Any], skipped: list[Skipped]
                 ) -> Predictions:
        """Calibrated probabilities, unknown scores and labels from ``(M, D)`` features."""
        logits = self.head_.decision_function(X) if len(X) else \
            np.zeros((0, len(self.classes_)), np.float32)
        proba = softmax(logits, getattr(self, "temperature_", 1.0))
        ood = getattr(self, "ood_", None)
        score = ood.score(X) if ood is not None else np.zeros(len(proba), np.float32)
        rejected = (score > ood.threshold_) if ood is not None and self.unknown else \
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

        Args:
            extra: ``extra(folder)`` adds files (a report) to the new folder before it is
                moved into place.

        Raises:
            ModelError: ``path`` exists and is not a headstart model or empty folder, holds
                files of its own, or cannot be written (nothing is changed then).
        """
        self._check_fitted()
        if not getattr(self, "is_global_zero_", True):
            logger.info("not rank 0: model not written")
            return Path(path)
        int8 = self._int8_engine()
        meta = {"classes": self.classes_, "backbone": self.backbone_.spec(),
                "head": {"kind": self.head_kind_}, "summary": self.summary_,
                "int8": int8.variant if int8 else None,
                "temperature": float(getattr(self, "temperature_", 1.0)),
                "ood": self.ood_.config() if getattr(self, "ood_", None) else None}
        arrays = {"backbone.safetensors": {k: v.detach().cpu().numpy() for k, v in
                                           self.backbone_.model.state_dict().items()},
                  "head.safetensors": self.head_.state()}
        if getattr(self, "ood_", None) is not None:
            arrays["ood.safetensors"] = self.ood_.state()
        if getattr(self, "train_digests_", None):
            arrays[HASHES_FILE] = {"train": np.frombuffer(
                bytes.fromhex("".join(self.train_digests_)), np.uint8).reshape(-1, 16)}

        def add_files(tmp: Path) -> None:
            write_metrics_csv(getattr(self, "history_", []), tmp / "metrics.csv")
            if int8 is not None:
                shutil.copyfile(int8.ir, tmp / INT8_XML)
                shutil.copyfile(int8.ir.with_suffix(".bin"), tmp / INT8_XML.replace(".xml",
                                                                                   ".bin"))
            if extra is not None:
                extra(tmp)
        return write_bundle(path, meta, arrays, add_files)

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
        d = Path(path)
        meta = read_meta(d)
        spec = meta["backbone"]
        classes, n_features = list(meta["classes"]), int(spec["num_features"])
        kind = meta["head"]["kind"]
        hstate = read_arrays(d, "head.safetensors", meta)
        digest, verified = verified_digest(d, "backbone.safetensors", meta)
        clf = cls(backbone=spec["name"], head=kind, cache=cache,
                  cache_dir=cache_dir, runtime=runtime, unknown=unknown)
        clf.backbone_ = backbone_from_file(spec, d / "backbone.safetensors", digest, verified)
        try:
            clf.head_ = head_from_state(kind, hstate, len(classes), n_features)
        except ModelError as e:
            raise ModelError(f"{d}: {e} (headstart.json: {len(classes)} classes, "
                             f"{n_features} backbone features)") from None
        clf.head_kind_ = kind
        clf.classes_ = classes
        clf.summary_ = meta.get("summary", {})
        clf.skipped_ = []
        clf.engine_ = None
        clf.temperature_ = float(meta.get("temperature", 1.0))
        ood = read_arrays(d, "ood.safetensors", meta, required=False)
        if meta.get("ood") and ood is not None:
            try:
                clf.ood_ = OutOfDistribution.from_state(meta["ood"], ood, n_features)
            except ModelError as e:
                raise ModelError(f"{d}: {e}") from None
        hashes = read_arrays(d, HASHES_FILE, meta, required=False)
        if hashes is not None:
            expect_shapes(f"{d}: {HASHES_FILE}", hashes, {"train": (-1, 16)})
            clf.train_digests_ = [r.tobytes().hex() for r in hashes["train"]]
        if meta.get("int8"):
            for name in (INT8_XML, INT8_XML.replace(".xml", ".bin")):
                verified_digest(d, name, meta)
            clf.int8 = True
            clf.engine_ = openvino_ir_engine(d / INT8_XML, meta["int8"])
        return clf

    def _int8_engine(self) -> Any:
        engine = getattr(self, "engine_", None)
        return engine if engine is not None and engine.variant.startswith("int8") else None

