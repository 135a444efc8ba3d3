"""The stages of ``Classifier.fit``, each a function from small records to small records.

Transfer learning::

    read_data      dataset + one pass over the files (features, hashes, headers,
                   thumbnails) + data health + domain gap -> Usable
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backbone.build import Backbone
from ..backbone.features import Features, prepare_image, scan_images
from ..backbone.runtime import Engine, int8_engine
from ..errors import DataError
from ..heads import FEW_SHOT_MAX_PER_CLASS, HEAD_KINDS, make_head
from ..io.dataset import (Dataset, ImageSet, Skipped, check_classes, drop_unreadable_classes,
                          load_dataset, split_rows, stratified_split)
from ..io.walk import find_images
from .calibration import Honesty, fit_honesty
from .domain import domain_gap, explain
from .health import Health, dataset_health
from .settings import FitSettings
from .summary import Calibration, DomainGap, Int8Summary

__all__ = ["Calibrated", "FittedHead", "HeldOut", "Quantized", "Usable", "calibrate",
           "fit_head", "holdout_accuracy", "quantize", "read_data", "use_taps"]

logger = logging.getLogger(__name__)


@dataclass
class Usable:
    """The images ``fit`` trains on, after one pass over the files.

    ``paths``, ``y``, ``is_train``: ``(M,)`` usable images (training rows first), labels
    into ``classes`` and training flags; ``X``: their ``(M, D)`` frozen features under
    ``backbone`` (None from scratch; tapped where :func:`use_taps`). ``computed`` /
    ``cached``: features computed in this pass / read from the cache; ``engine``: the
    engine the pass used (None if none was needed); ``gap``: how far the training images
    sit from the backbone's pretraining photos (None from scratch).
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
    gap: DomainGap | None = None

    @property
    def train_labels(self) -> np.ndarray:
        return self.y[self.is_train]


def _dataset(data: Any, labels: Sequence[str] | None, val: Any) -> Dataset:
    if labels is None:
        return load_dataset(data, val)
    if len(labels) != len(data):
        raise DataError(param="labels", expected=f"one per image ({len(data)})",
                        got=len(labels))
    classes = sorted(set(map(str, labels)))
    train = ImageSet(list(data), [classes.index(str(lab)) for lab in labels], classes)
    check_classes(train.labels, train.classes, "labels")
    val_set = load_dataset(Path(val)).train if val is not None else None
    return Dataset(train=train, val=val_set, layout="in memory")


def use_taps(head: str | None, train_labels: np.ndarray, gap: str | None = None) -> bool:
    """Whether ``fit`` uses the features of a tapped backbone
    (:meth:`~headstart.backbone.build.Backbone.with_taps`), the one place this is decided:
    for a head kind that ``uses_blocks``, with at most
    :data:`~headstart.heads.FEW_SHOT_MAX_PER_CLASS` training images in a class, on images
    not ``near`` ImageNet (``gap``: the domain gap's level; None before it is known, when
    the tapped features are read in the same pass, and dropped once it says ``near``)."""
    counts = np.bincount(np.asarray(train_labels, int))
    return head in HEAD_KINDS and HEAD_KINDS.get(head).uses_blocks and len(counts) > 0 \
        and int(counts[counts > 0].min()) <= FEW_SHOT_MAX_PER_CLASS and gap != "near"


def read_data(data: Any, labels: Sequence[str] | None, val: Any, backbone: Backbone | None,
              settings: FitSettings) -> Usable:
    """Find the images (see :func:`headstart.io.dataset.load_dataset`; ``labels``: names of
    the images in ``data``, a sequence of paths or PIL images), read each file once
    (features under ``backbone``, or a decode check without one), judge the data's health
    and its distance from the backbone's pretraining photos, and leave out unreadable
    files and classes none of whose images can be read. Where :func:`use_taps`, the
    features are those of the backbone tapped at intermediate blocks (same pass).

    Raises:
        DataError: fewer than 2 classes with usable training images, or bad paths.
    """
    dataset = _dataset(data, labels, val)
    paths, y_all, train_all = dataset.rows()
    feats: Features | None = None
    if backbone is not None and use_taps(settings.head, y_all[train_all]):
        backbone = backbone.with_taps() or backbone
    if backbone is not None:
        feats = settings.extract(backbone, paths, thumbs=True, progress=True)
        ok, bad, facts, X = feats.index, feats.skipped, feats.facts, feats.X
    else:
        ok, bad, facts, X = *scan_images(paths), None
    skipped = dataset.skipped + bad
    final = backbone.final(X) if X is not None and backbone is not None else None
    health, digests = dataset_health(dataset, None if labels is not None else data, facts,
                                     skipped, final, ok)
    classes, y, keep, dropped = drop_unreadable_classes(dataset.train, y_all[ok],
                                                        train_all[ok])
    ok, y = ok[keep], y[keep]
    is_train = train_all[ok]
    check_classes(y[is_train], classes, f"{data} (after skipping unreadable files)")
    computed = feats.computed if feats is not None else 0
    usable = Usable(
        source=str(data) if labels is None else f"{len(data)} images",
        data_path=os.path.abspath(data) if labels is None and os.path.exists(data) else None,
        layout=dataset.layout, classes=classes, paths=[paths[i] for i in ok], y=y,
        is_train=is_train, X=X[keep] if X is not None else None,
        skipped=skipped + dropped, health=health, train_digests=digests, computed=computed,
        cached=len(feats.index) - computed if feats is not None else 0,
        engine=feats.engine if feats is not None else None, backbone=backbone)
    if backbone is None or settings.head is None:
        return usable
    return _judge_domain(usable, settings.head)


def _judge_domain(usable: Usable, head: str) -> Usable:
    """``usable`` with its domain gap; its tapped blocks dropped where :func:`use_taps`
    says no once the gap is known (they pay far from ImageNet, not near it)."""
    backbone, X = usable.backbone, usable.X
    assert backbone is not None and X is not None
    gap = domain_gap(backbone, X[usable.is_train])
    if backbone.taps and not use_taps(head, usable.train_labels, gap.level):
        usable = replace(usable, X=backbone.final(X), backbone=backbone.without_taps(),
                         engine=None)
    if gap.level == "far":  # the CLI and the report say it again beside the accuracy
        logger.info("these images look far from the backbone's pretraining photos "
                       "(%s): transfer learning may not be the right tool; run "
                       "'headstart advise %s'", explain(gap), usable.data_path or "DATA")
    return replace(usable, gap=gap)


def read_pile(pile: Any, backbone: Backbone, settings: FitSettings
              ) -> tuple[np.ndarray, list[Skipped]]:
    """The features ``(M, D)`` under ``backbone`` of the unlabelled images in ``pile`` (a
    folder searched recursively, whose folder names are never read as labels, or a list of
    paths), and the files skipped with their reasons (logged, like any input's).

    Raises:
        DataError: the pile does not exist.
    """
    items = [pile] if isinstance(pile, (str, os.PathLike)) else list(pile)
    files, skipped = find_images(items)
    feats = settings.extract(backbone, files, progress=True)
    skipped = skipped + feats.skipped
    for s in skipped:
        logger.warning("unlabelled: skipped %s: %s", s.path, s.reason)
    return feats.X, skipped


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
             blocks: tuple[int, ...] = ()) -> tuple[Any, dict[str, float]]:
    """A ``kind`` head fitted on ``X`` ``(N, D)``: the head it keeps and its CV scores."""
    head = make_head(kind, seed, imagenet, blocks).fit(X, y)
    return head.result(), head.cv_scores()


def fit_head(X: np.ndarray, y: np.ndarray, is_train: np.ndarray, settings: FitSettings,
             imagenet: tuple[np.ndarray, np.ndarray] | None = None,
             blocks: tuple[int, ...] = ()) -> FittedHead:
    """Fit a ``settings.head`` head (a registered kind) on the training rows of ``X``
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
    kind, seed, val_fraction = settings.head, settings.seed, settings.val_fraction
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
        head = type(head)(**head.refit_params()).fit(X[train_rows], y[train_rows])
    return float(np.mean(head.predict(X[val_rows]) == y[val_rows])), int(len(val_rows))


@dataclass
class Quantized:
    """The INT8 engine, the training images' features under it, the head refitted on
    them, and both validation accuracies."""

    engine: Engine
    X: np.ndarray
    fitted: FittedHead
    summary: Int8Summary


def quantize(backbone: Backbone, usable: Usable, fp32: FittedHead, settings: FitSettings,
             imagenet: tuple[np.ndarray, np.ndarray] | None = None) -> Quantized:
    """Quantise ``backbone`` to INT8 (calibrated on up to 300 training images), refit the
    head on its features and compare the validation accuracy with ``fp32``'s.

    Raises:
        HeadstartError: OpenVINO or NNCF missing.
    """
    calibration = [p for p, t in zip(usable.paths, usable.is_train) if t]
    step = max(1, len(calibration) // 300)
    engine = int8_engine(backbone, settings.cache_root, np.stack(
        [prepare_image(p, backbone.preprocess) for p in calibration[::step][:300]]))
    X8 = settings.extract(backbone, usable.paths, engine=engine, progress=True).X
    fitted = fit_head(X8, usable.y, usable.is_train, settings, imagenet, backbone.tap_widths)
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


def calibrate(head: Any, X: np.ndarray, usable: Usable, held_out_fold: bool,
              settings: FitSettings) -> Calibrated:
    """Fit the temperature and the unknown detector on the final features ``X`` ``(M, D)``
    of ``usable``'s rows.

    ``held_out_fold``: the head was trained without the stratified held-out fold
    (fine-tuned and from-scratch models), so that fold serves as validation when there is
    no validation split.
    """
    y, is_train, seed = usable.y, usable.is_train, settings.seed
    train_rows, val_rows = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    if held_out_fold and not len(val_rows):
        train_rows, val_rows = split_rows(y, is_train, settings.val_fraction, seed)
    h: Honesty = fit_honesty(head, X, y, train_rows, val_rows, seed)
    rows = h.rows
    held = HeldOut([usable.paths[i] for i in rows], y[rows], h.logits,
                   h.ood.score(X[rows]) > h.ood.threshold_, h.calibration.fitted_on)
    return Calibrated(h.temperature, h.ood, h.calibration, held)
