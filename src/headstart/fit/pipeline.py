"""The order of the stages of ``Classifier.fit`` (see :mod:`headstart.fit.stages`): the
transfer-learning run and the from-scratch run, each from the data to a :class:`Trained`
record that the classifier takes its fitted attributes from."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .. import __version__, defaults
from ..backbone.build import Backbone
from ..backbone.runtime import Engine
from .callbacks import Stopwatch
from .finetune import FinetuneConfig, finetune_stage, skip_reason
from .scratch import scratch_stage
from .settings import FitSettings
from .stages import (Calibrated, FittedHead, Usable, calibrate, fit_head, holdout_accuracy,
                     quantize, read_data)
from .summary import TrainingSummary

__all__ = ["Trained", "scratch", "transfer"]

logger = logging.getLogger(__name__)


@dataclass
class Trained:
    """What a run leaves: the images it used, the backbone and the head it ends with, the
    engine that computed the final features, the calibration, the training record and
    the epochs of fine-tuning or training from scratch."""

    usable: Usable
    backbone: Backbone
    fitted: FittedHead
    engine: Engine | None
    calibrated: Calibrated
    summary: TrainingSummary
    history: list[dict[str, float]]


@dataclass
class _State:
    """The run so far: the backbone, the features ``X`` ``(M, D)`` under it, the engine
    that made them, the head, the epochs and the stages' records."""

    backbone: Backbone
    X: np.ndarray
    engine: Engine | None
    fitted: FittedHead
    history: list[dict[str, float]]
    records: dict[str, Any]
    tuned: bool = False


def transfer(data: Any, labels: Sequence[str] | None, val: Any, plain: Backbone,
             settings: FitSettings, finetune: FinetuneConfig | None = None,
             int8: bool = False, unlabelled: Any = None) -> Trained:
    """Frozen features, a new head (with the unlabelled pile where it helps), optionally
    fine-tuning and INT8, then calibration.

    ``finetune``: the fine-tuning settings (None: no fine-tuning); ``int8``: quantise the
    backbone and refit the head on its features; ``unlabelled``: a folder (or paths) of
    unlabelled images for the head (see :mod:`headstart.fit.unlabelled`).
    """
    t0, cb = time.perf_counter(), settings.callbacks
    with cb.stage("read_data"):
        usable = read_data(data, labels, val, plain, settings)
    assert usable.X is not None and usable.backbone is not None and usable.gap is not None
    # ImageNet's classes are features worth trying only for ImageNet-like images
    imagenet = usable.backbone.imagenet_head if usable.gap.level == "near" else None
    with cb.stage("fit_head"):
        fitted = fit_head(usable.X, usable.y, usable.is_train, settings, imagenet,
                          usable.backbone.tap_widths)
    run = _State(usable.backbone, usable.X, usable.engine, fitted, [],
                 {"domain_gap": usable.gap})
    if unlabelled is not None:
        with cb.stage("unlabelled"):
            run = _with_pile(run, usable, unlabelled, settings, imagenet)
    if finetune is not None:
        with cb.stage("finetune"):
            run = _finetune(run, usable, plain, finetune, settings)
    if int8:
        with cb.stage("quantize"):
            q = quantize(run.backbone, usable, run.fitted, settings, imagenet)
            run = replace(run, X=q.X, engine=q.engine, fitted=q.fitted,
                          records={**run.records, "int8": q.summary})
        pile = run.records.get("unlabelled")
        if pile is not None and pile.kept:  # the INT8 head is refitted on labelled rows
            pile.kept = False
            pile.reason = ("not used in the end: --int8 refits the head on the labelled "
                           "images' INT8 features alone")
    with cb.stage("calibrate"):
        calibrated = calibrate(run.fitted.head, run.X, usable, run.tuned and not int8,
                               settings)
    summary = summarize(usable, run.fitted, run.backbone.name, t0, settings,
                        runtime=run.engine.name if run.engine else "cache",
                        calibration=calibrated.calibration, **run.records)
    return Trained(usable, run.backbone, run.fitted, run.engine, calibrated, summary,
                   run.history)


def _with_pile(run: _State, usable: Usable, pile: Any, settings: FitSettings,
               imagenet: Any) -> _State:
    """The head trained with the unlabelled pile too, where that is safe (see
    :func:`headstart.fit.unlabelled.learn_from_pile`), and the pile's record."""
    from .unlabelled import learn_from_pile
    from .stages import read_pile

    Xu, skipped = read_pile(pile, run.backbone, settings)
    tr = usable.is_train
    head, report = learn_from_pile(run.X[tr], usable.y[tr], Xu, run.fitted.head,
                                   run.backbone.tap_widths, imagenet)
    report.skipped = len(skipped)
    logger.info("unlabelled images: %s", report.reason)
    fitted = run.fitted
    if report.kept and head is not run.fitted.head:
        if (~tr).any():  # a validation split: measured there, as without the pile
            acc = float(np.mean(head.predict(run.X[~tr]) == usable.y[~tr]))
            fitted = FittedHead(head, fitted.cv_scores, acc, int((~tr).sum()),
                                "validation split")
        elif report.cv_with is not None:
            fitted = FittedHead(head, fitted.cv_scores, report.cv_with, report.cv_images,
                                "cross-validation on the labelled images: each predicted "
                                "by a head that saw neither it nor pile labels drawn from "
                                "it")
        else:
            fitted = replace(fitted, head=head)
    return replace(run, fitted=fitted, records={**run.records, "unlabelled": report})


def _finetune(run: _State, usable: Usable, plain: Backbone, cfg: FinetuneConfig,
              settings: FitSettings) -> _State:
    """Fine-tune where the data allows; the tuned backbone and head replace the run's only
    when they beat the head alone on the same validation images."""
    head_only = run.fitted.val_accuracy
    if skip_reason(cfg, usable.y, usable.is_train) is None:  # on the same rows
        head_only, _ = holdout_accuracy(run.fitted.head, usable.X, usable.y, usable.is_train,
                                        settings.seed, settings.val_fraction)
    ft = finetune_stage(plain, usable.paths, usable.y, usable.is_train, head_only, cfg,
                        settings.cache_root, lambda b, images: settings.extract(b, images).X,
                        settings.seed, settings.val_fraction, settings.callbacks.epoch)
    records = {**run.records, "finetune": ft.summary}
    if ft.backbone is None:
        return replace(run, history=ft.history, records=records)
    where = ("validation split" if (~usable.is_train).any() else
             f"held-out {settings.val_fraction:.0%} of each class, not trained on")
    fitted = FittedHead(ft.head, {}, ft.val_accuracy, ft.val_images, where + ", fine-tuned")
    feats = settings.extract(ft.backbone, usable.paths)
    return _State(ft.backbone, feats.X, feats.engine, fitted, ft.history, records, True)


def scratch(data: Any, labels: Sequence[str] | None, val: Any,
            cfg: FinetuneConfig | None, settings: FitSettings) -> Trained:
    """A compact network trained from random weights (see :mod:`headstart.fit.scratch`),
    then calibration."""
    t0, cb = time.perf_counter(), settings.callbacks
    with cb.stage("read_data"):
        usable = read_data(data, labels, val, None, settings)
    cfg = cfg or FinetuneConfig(lr=defaults.SCRATCH_LR, augment="none")
    with cb.stage("scratch"):
        stage = scratch_stage(usable.paths, usable.y, usable.is_train, len(usable.classes),
                              cfg, settings.cache_root,
                              lambda b, images: settings.extract(b, images).X,
                              settings.seed, settings.val_fraction, on_epoch=cb.epoch)
    source = ("validation split" if (~usable.is_train).any() else
              f"held-out {settings.val_fraction:.0%} of each class")
    fitted = FittedHead(stage.head, {}, stage.val_accuracy, stage.val_images, source)
    feats = settings.extract(stage.backbone, usable.paths)
    with cb.stage("calibrate"):
        calibrated = calibrate(stage.head, feats.X, usable, True, settings)
    summary = summarize(usable, fitted, stage.backbone.name, t0, settings, runtime="torch",
                        from_scratch=stage.summary, calibration=calibrated.calibration)
    return Trained(usable, stage.backbone, fitted, feats.engine, calibrated, summary,
                   stage.history)


def summarize(usable: Usable, fitted: FittedHead, backbone_name: str, t0: float,
              settings: FitSettings, **stages: Any) -> TrainingSummary:
    """The training record: common facts, then ``stages`` (absent ones stay None)."""
    counts = np.bincount(usable.train_labels, minlength=len(usable.classes))
    scratch_run = "from_scratch" in stages
    return TrainingSummary(
        headstart_version=__version__, trained_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        data=usable.source, data_path=usable.data_path, layout=usable.layout,
        backbone=backbone_name, head=fitted.head.kind, head_cv_accuracy=fitted.cv_scores,
        head_settings=fitted.head.chosen(),
        train_counts={c: int(n) for c, n in zip(usable.classes, counts)},
        skipped=len(usable.skipped),
        features_computed=usable.computed if not scratch_run else 0,
        features_cached=usable.cached if not scratch_run else 0,
        health=usable.health, val_images=fitted.val_images,
        val_accuracy=fitted.val_accuracy if fitted.val_images else None,
        val_source=fitted.val_source, **stages, timings=dict(_laps(settings)),
        seconds=round(time.perf_counter() - t0, 2))


def _laps(settings: FitSettings) -> dict[str, float]:
    for c in settings.callbacks.callbacks:
        if isinstance(c, Stopwatch):
            return c.laps
    return {}
