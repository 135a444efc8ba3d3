"""The stages of ``Classifier.fit``, each a function from small records to small records.

Transfer learning::

    read_data      dataset + one pass over the files (features, hashes, headers,
                   thumbnails) + data health              -> Usable
    fit_head       the new head on frozen features, measured on held-out images
                                                          -> FittedHead
    (finetune_stage, :mod:`headstart.fit.finetune`)           -> a tuned backbone and head
    quantize       INT8 backbone, head refitted on its features
                                                          -> Quantized
    calibrate      temperature and unknown detector on held-out predictions
                                                          -> Calibrated

From scratch: ``read_data`` without a backbone, then
:func:`headstart.fit.scratch.scratch_stage`, then ``calibrate``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..backbone.build import Backbone
from ..fit.calibration import Honesty, fit_honesty
from ..io.dataset import (Dataset, ImageSet, Skipped, check_classes, drop_unreadable_classes,
                   load_dataset, split_rows, stratified_split)
from ..errors import DataError
from ..backbone.features import FeatureCache, Features, ProgressFn, extract_features, prepare_image, \
    scan_images
from ..fit.health import Health, dataset_health
from ..heads.linear import FEW_SHOT_MAX_PER_CLASS, AutoHead, LinearHead, make_head
from ..backbone.runtime import Engine, int8_engine
from ..fit.summary import Calibration, Int8Summary

__all__ = ["Callbacks", "Calibrated", "Stopwatch", "FittedHead", "HeldOut", "Quantized", "Usable",
           "calibrate", "fit_head", "holdout_accuracy", "quantize", "read_data", "reads_taps"]

logger = logging.getLogger(__name__)

EpochFn = Callable[[dict[str, float]], None]


@dataclass
class Callbacks:
    """What ``fit`` reports while it runs: ``progress(done, total)`` during feature
    extraction, ``epoch(row)`` after each fine-tuning or from-scratch epoch (``row``:
    ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``)."""

    progress: ProgressFn | None = None
    epoch: EpochFn | None = None


class Stopwatch:
    """Seconds per stage: ``lap(name)`` records the time since the previous lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 3)
        self._last = now


@dataclass
class Usable:
    """The images ``fit`` trains on, after one pass over the files.

    ``paths``, ``y``, ``is_train``: ``(M,)`` usable images (training rows first), labels
    into ``classes`` and training flags; ``X``: their ``(M, D)`` frozen features under
    ``backbone`` (None from scratch). ``computed`` / ``cached``: features computed in this
    pass / read from the cache; ``engine``: the engine the pass used (None if none was
    needed).
    """

    source: str
    data_path: str | None
    layout: str
    classes: list[str]
    paths: list[Any]
    y: np.ndarray
    is_train: np.ndarray
    X: np.ndarray | None
    skipped: list[Skipped]
    health: Health
    train_digests: list[str]
    computed: int = 0
    cached: int = 0
    engine: Engine | None = None
    backbone: Backbone | None = None

    @property
    def train_labels(self) -> np.ndarray:
        return self.y[self.is_train]


def _dataset(data: Any, labels: Sequence[str] | None, val: Any) -> Dataset:
    if labels is None:
        return load_dataset(data, val)
    if len(labels) != len(data):
        raise DataError(f"labels: expected one per image ({len(data)}), got {len(labels)}")
    classes = sorted(set(map(str, labels)))
    train = ImageSet(list(data), [classes.index(str(lab)) for lab in labels], classes)
    check_classes(train.labels, train.classes, "labels")
    val_set = load_dataset(Path(val)).train if val is not None else None
    return Dataset(train=train, val=val_set, layout="in memory")


def reads_taps(train_labels: np.ndarray, head: str | None) -> bool:
    """Whether ``fit`` reads the features of a tapped backbone
    (:meth:`~headstart.backbone.build.Backbone.with_taps`): for a linear or ``auto`` head, with
    at most :data:`~headstart.heads.linear.FEW_SHOT_MAX_PER_CLASS` training images in a class
    (where the intermediate blocks can pay; the head weighs them by cross-validation)."""
    counts = np.bincount(np.asarray(train_labels, int))
    return head in ("auto", "linear") and len(counts) > 0 and \
        int(counts[counts > 0].min()) <= FEW_SHOT_MAX_PER_CLASS


def read_data(data: Any, labels: Sequence[str] | None, val: Any,
              backbone: Backbone | None, cache: FeatureCache | None, batch_size: int = 32,
              runtime: str = "auto", callbacks: Callbacks | None = None,
              head: str | None = None) -> Usable:
    """Find the images (see :func:`headstart.io.dataset.load_dataset`; ``labels``: names of the
    images in ``data``, a sequence of paths or PIL images), read each file once (features
    under ``backbone``, or a decode check without one), judge the data's health, and leave
    out unreadable files and classes none of whose images can be read.

    ``head``: the kind of head to be fitted; where :func:`reads_taps`, the features read are
    those of the backbone tapped at intermediate blocks (where it can be), in the same pass.

    Raises:
        DataError: fewer than 2 classes with usable training images, or bad paths.
    """
    dataset = _dataset(data, labels, val)
    paths, y_all, train_all = dataset.rows()
    source = None if labels is not None else data
    X: np.ndarray | None = None
    feats: Features | None = None
    if backbone is not None and reads_taps(y_all[train_all], head):
        backbone = backbone.with_taps() or backbone
    if backbone is not None:
        feats = extract_features(backbone, paths, cache, batch_size,
                                 callbacks.progress if callbacks else None, runtime=runtime,
                                 thumbs=True)
        ok, bad, facts, X = feats.index, feats.skipped, feats.facts, feats.X
    else:
        ok, bad, facts = scan_images(paths)
    skipped = dataset.skipped + bad
    final = backbone.final(X) if X is not None and backbone is not None else None
    health, digests = dataset_health(dataset, source, facts, skipped, final, ok)
    classes, y, keep, dropped = drop_unreadable_classes(dataset.train, y_all[ok],
                                                        train_all[ok])
    ok, y = ok[keep], y[keep]
    is_train = train_all[ok]
    check_classes(y[is_train], classes, f"{data} (after skipping unreadable files)")
    computed = feats.computed if feats is not None else 0
    return Usable(
        source=str(data) if labels is None else f"{len(data)} images",
        data_path=os.path.abspath(data) if labels is None and os.path.exists(data) else None,
        layout=dataset.layout, classes=classes, paths=[paths[i] for i in ok], y=y,
        is_train=is_train, X=X[keep] if X is not None else None,
        skipped=skipped + dropped, health=health, train_digests=digests, computed=computed,
        cached=len(feats.index) - computed if feats is not None else 0,
        engine=feats.engine if feats is not None else None, backbone=backbone)


@dataclass
class FittedHead:
    """A head fitted on the training rows: its validation accuracy on ``val_images``
    held-out images (measured as ``val_source`` says) and each candidate's CV accuracy."""

    head: Any
    cv_scores: dict[str, float]
    val_accuracy: float
    val_images: int
    val_source: str


def _fit_one(kind: str, X: np.ndarray, y: np.ndarray, seed: int, imagenet: Any = None,
             blocks: tuple[int, ...] = ()
             ) -> tuple[Any, dict[str, float]]:
    head = make_head(kind, seed, imagenet, blocks).fit(X, y)
    if isinstance(head, AutoHead):
        return head.best_, head.cv_scores_
    score = head.cv_score_ if isinstance(head, LinearHead) else float("nan")
    return head, ({kind: score} if score == score else {})


def fit_head(X: np.ndarray, y: np.ndarray, is_train: np.ndarray, kind: str, seed: int,
             val_fraction: float, imagenet: tuple[np.ndarray, np.ndarray] | None = None,
             blocks: tuple[int, ...] = ()) -> FittedHead:
    """Fit a ``kind`` head (``auto``, ``linear``, ``mlp``) on the training rows of ``X``
    ``(N, D)`` and measure it on the validation rows. ``imagenet``: the backbone's ImageNet
    classifier, for the linear head to try as extra features (see
    :class:`headstart.heads.linear.LinearHead`; given for images near ImageNet); ``blocks``: the
    widths of the tapped blocks at the end of each row of ``X``.

    Without validation rows, the measure is the head's own cross-validation: every
    training image predicted by a head fitted on the other folds, with the settings chosen
    on those folds (no fit is repeated for it). A head that is not cross-validated (``mlp``
    alone, or a class with one image) is measured on a stratified ``val_fraction`` held
    out from a probe fit, then refitted on all training rows.

    With one image per class nothing can be held out: ``val_accuracy`` is NaN and
    ``val_images`` 0.
    """
    Xtr, ytr, Xva, yva = X[is_train], y[is_train], X[~is_train], y[~is_train]
    if len(yva):
        head, scores = _fit_one(kind, Xtr, ytr, seed, imagenet, blocks)
        return FittedHead(head, scores, float(np.mean(head.predict(Xva) == yva)), len(yva),
                          "validation split")
    head, scores = _fit_one(kind, Xtr, ytr, seed, imagenet, blocks)
    if head.oof_logits_ is not None:
        rows = head.oof_rows_
        acc = float(np.mean(np.argmax(head.oof_logits_, axis=1) == ytr[rows]))
        return FittedHead(head, scores, acc, len(rows), "cross-validation on the training "
                          "images (each predicted by heads fitted without it)")
    tr, va = stratified_split(ytr, val_fraction, seed)
    if len(va) == 0:
        logger.warning("one image per class: nothing to hold out, so the accuracy is not "
                       "measured and the probabilities are not calibrated")
        return FittedHead(head, scores, float("nan"), 0, "not measured (one image per "
                          "class: nothing to hold out)")
    probe, _ = _fit_one(kind, Xtr[tr], ytr[tr], seed, imagenet, blocks)
    val_acc = float(np.mean(probe.predict(Xtr[va]) == ytr[va]))
    return FittedHead(head, scores, val_acc, len(va),
                      f"held-out {val_fraction:.0%} of each class, measured before the final "
                      "refit on all training images")


def holdout_accuracy(head: Any, X: np.ndarray, y: np.ndarray, is_train: np.ndarray,
                     seed: int, val_fraction: float) -> tuple[float, int]:
    """Accuracy of a head like ``head`` (same kind, same chosen settings) on the rows that
    fine-tuning and ``advise`` validate on (:func:`headstart.io.dataset.split_rows`), trained on
    the others: ``(accuracy, images)``."""
    train_rows, val_rows = split_rows(y, is_train, val_fraction, seed)
    if not (~is_train).any():
        params = head.get_params()
        if isinstance(head, LinearHead):
            params["Cs"], params["block_weights"] = (head.C_,), (head.block_weight_,)
        head = type(head)(**params).fit(X[train_rows], y[train_rows])
    return float(np.mean(head.predict(X[val_rows]) == y[val_rows])), int(len(val_rows))


@dataclass
class Quantized:
    """The INT8 engine, the training images' features under it, the head refitted on
    them, and both validation accuracies."""

    engine: Engine
    X: np.ndarray
    fitted: FittedHead
    summary: Int8Summary


def quantize(backbone: Backbone, usable: Usable, fp32: FittedHead, kind: str,
             cache: FeatureCache | None, cache_root: Path, batch_size: int, runtime: str,
             seed: int, val_fraction: float, progress: ProgressFn | None = None,
             imagenet: tuple[np.ndarray, np.ndarray] | None = None) -> Quantized:
    """Quantise ``backbone`` to INT8 (calibrated on up to 300 training images), refit the
    head on its features and compare the validation accuracy with ``fp32``'s.

    Raises:
        HeadstartError: OpenVINO or NNCF missing.
    """
    calibration = [p for p, t in zip(usable.paths, usable.is_train) if t]
    step = max(1, len(calibration) // 300)
    engine = int8_engine(backbone, cache_root, np.stack(
        [prepare_image(p, backbone.preprocess) for p in calibration[::step][:300]]))
    X8 = extract_features(backbone, usable.paths, cache, batch_size, progress,
                          runtime=runtime, engine=engine).X
    fitted = fit_head(X8, usable.y, usable.is_train, kind, seed, val_fraction, imagenet,
                      backbone.tap_widths)
    drop = fp32.val_accuracy - fitted.val_accuracy
    if drop > 0.005:
        logger.warning("INT8 lowers validation accuracy by %.1f points (%.4f -> %.4f); "
                       "consider training without int8", 100 * drop, fp32.val_accuracy,
                       fitted.val_accuracy)
    return Quantized(engine, X8, fitted, Int8Summary(engine.variant, fp32.val_accuracy,
                                                     fitted.val_accuracy, drop))


@dataclass
class HeldOut:
    """Held-out predictions of the final model, kept for the model report: the images
    (``sources``), their labels ``y`` ``(n,)``, ``(n, K)`` ``logits``, which were
    ``rejected`` as unknown, and ``what`` they are."""

    sources: list[Any]
    y: np.ndarray
    logits: np.ndarray
    rejected: np.ndarray
    what: str


@dataclass
class Calibrated:
    """The temperature, the unknown detector and their record, and the held-out
    predictions they were fitted on."""

    temperature: float
    ood: Any
    calibration: Calibration
    held_out: HeldOut = field(repr=False)


def calibrate(head: Any, X: np.ndarray, usable: Usable, held_out_fold: bool, seed: int,
              val_fraction: float) -> Calibrated:
    """Fit the temperature and the unknown detector on the final features ``X`` ``(M, D)``
    of ``usable``'s rows.

    ``held_out_fold``: the head was trained without the stratified held-out fold
    (fine-tuned and from-scratch models), so that fold serves as validation when there is
    no validation split.
    """
    y, is_train = usable.y, usable.is_train
    train_rows, val_rows = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if held_out_fold and not len(val_rows):
        train_rows, val_rows = split_rows(y, is_train, val_fraction, seed)
    h: Honesty = fit_honesty(head, X, y, train_rows, val_rows, seed)
    rows = h.rows
    held = HeldOut([usable.paths[i] for i in rows], y[rows], h.logits,
                   h.ood.score(X[rows]) > h.ood.threshold_, h.calibration.fitted_on)
    return Calibrated(h.temperature, h.ood, h.calibration, held)
