"""Fine-tuning: unfreeze the top of the backbone and keep training at a lower learning rate.

Linear probe, then fine-tune: the new head starts from a logistic-regression head fitted on
frozen features (at the fine-tuning image size), so the first steps do not wreck the
pretrained features. Built on PyTorch Lightning, so scale-out is a matter of flags
(``accelerator``, ``devices``, ``strategy``, ``num_nodes``, ``precision``).

Rules:

* ``mode``: ``off``; ``all``; ``last-N`` (unfreeze the top N stages of the backbone, as timm
  groups them: stem, each block stage, the final conv); ``auto`` fine-tunes ``last-3`` only
  when every class has at least :data:`AUTO_MIN_PER_CLASS` training images, within
  :data:`AUTO_MAX_MINUTES` unless ``max_minutes`` says otherwise. ``auto`` runs a fixed
  schedule (``max_epochs``, no early stopping) and keeps the last epoch's weights, so the
  validation images choose nothing before they judge. The threshold and the keep margin
  below come from ``benchmarks/finetune_auto.py`` (figures in ``benchmarks/README.md``).
* image size: the backbone's input size, unless the images are much smaller: when their
  median shorter side is under half the input size they train at twice that side, rounded
  up to a multiple of 32 and at least 64 px (28 px digits train at 64 px).
* learning rates: head ``lr``, backbone ``lr * backbone_lr_factor`` (discriminative rates);
  linear warmup for ``warmup_epochs`` then cosine decay to zero; AdamW with weight decay;
  cross-entropy with label smoothing and class-balanced weights.
* BatchNorm layers in frozen stages keep their ImageNet statistics (always in eval mode).
* early stopping on validation accuracy (``patience`` epochs); the best epoch's weights
  are restored at the end (``restore_best=False`` keeps the last epoch's: a measurement
  not chosen on the validation images it is reported on, as ``advise`` needs; with it and
  no early stopping, ``validate_each_epoch=False`` validates the last epoch only).
* the fine-tuned model replaces the head-only one only if its validation accuracy is
  higher on the same validation images by at least two images and by more than
  :data:`KEEP_MARGIN_SE` standard errors of the difference (:func:`clear_gain`: one
  image of 9 is chance); ``keep="finetuned"`` keeps it regardless.
* the frozen stages run once per image (and augmented view), not once per epoch: see
  :mod:`headstart.fit.cached`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import defaults
from ..io.files import FileProblem, read_regular, worker_count
from .._threads import before_torch, size_torch
from ..fit.training import (Images, augmenter, epoch_seconds, history_callback, module_class,
                            transforms, weights_digest)
from ..backbone.build import Preprocess
from ..io.dataset import median_short_side, split_rows
from ..errors import HeadstartError
from ..heads.linear import LinearHead
from ..fit.summary import FinetuneSummary, ScratchSummary

__all__ = ["AUTO_MAX_MINUTES", "AUTO_MIN_PER_CLASS", "KEEP_MARGIN_SE", "FinetuneConfig",
           "FinetuneResult", "StageResult", "choose_image_size", "clear_gain", "finetune",
           "finetune_stage", "is_rank_zero", "parse_mode", "read_metrics_csv", "schedule",
           "skip_reason", "write_metrics_csv"]

logger = logging.getLogger(__name__)

AUTO_MIN_PER_CLASS = 200  # below it, no measured task gained (benchmarks/README.md)
AUTO_MAX_MINUTES = 5.0  # the budget of an 'auto' fine-tune without --max-minutes
KEEP_MARGIN_SE = 1.0  # keep="better": the validation gain must exceed this many std errors
AUGMENTS = ("none", "light", "strong")


def is_rank_zero() -> bool:
    """False in the other processes of a distributed run (Lightning DDP, torchrun), which
    train alongside rank 0 but must not write the model; True everywhere else."""
    return all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def parse_mode(mode: str) -> str | int:
    """``off`` / ``auto`` / ``all`` as is, ``last-N`` as the int N."""
    if mode in ("off", "auto", "all"):
        return mode
    if mode.startswith("last-") and mode[5:].isdigit() and int(mode[5:]) >= 1:
        return int(mode[5:])
    raise HeadstartError(param="finetune", expected="off, auto, all or last-N (N >= 1)",
                         got=mode)


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; see the module docstring for the rules."""

    mode: str = "off"
    augment: str = "light"
    image_size: int | None = None
    lr: float = defaults.LR
    backbone_lr_factor: float = defaults.BACKBONE_LR_FACTOR
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    max_epochs: int = defaults.EPOCHS
    patience: int = defaults.PATIENCE
    batch_size: int = 32
    max_minutes: float | None = None
    resume: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    num_workers: int | None = None
    keep: str = "better"
    restore_best: bool = True
    validate_each_epoch: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`HeadstartError` naming the first setting that is out of range (run
        on construction)."""
        parse_mode(self.mode)
        if self.keep not in ("better", "finetuned"):
            raise HeadstartError(f"keep: expected 'better' or 'finetuned', got {self.keep!r}")
        if self.augment not in AUGMENTS:
            raise HeadstartError(param="augment", expected=f"one of {', '.join(AUGMENTS)}",
                                 got=self.augment)
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise HeadstartError(param="image_size", expected="16..1024 pixels",
                                 got=self.image_size)
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise HeadstartError(param="max_minutes", expected="> 0", got=self.max_minutes)
        if not self.validate_each_epoch and (self.restore_best
                                             or self.patience < self.max_epochs):
            raise HeadstartError(
                param="validate_each_epoch",
                expected="True unless restore_best=False and patience >= max_epochs (early "
                         "stopping and the best epoch need every epoch validated)",
                got=self.validate_each_epoch)


@dataclass
class FinetuneResult:
    """What fine-tuning produced.

    Attributes:
        model: the fine-tuned backbone (``torch.nn.Module``), eval mode, frozen.
        head_weight: ``(K, D)`` and ``head_bias`` ``(K,)`` of the linear head.
        val_accuracy: best validation accuracy (restored epoch).
        history: one dict per epoch (``epoch``, ``train_loss``, ``val_accuracy``,
            ``val_loss``, ``lr``, ``seconds``).
        unfrozen: names of the unfrozen stages; ``epochs``: epochs run; ``best_epoch``.
    """

    model: Any
    head_weight: np.ndarray
    head_bias: np.ndarray
    val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    unfrozen: list[str] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = 0


def choose_image_size(paths: Sequence[Any], default: int) -> int:
    """The fine-tuning input size for these images (rule in the module docstring)."""
    m = median_short_side(paths)
    if m is None or m >= default / 2:
        return default
    return int(min(default, max(64, 32 * math.ceil(2 * m / 32))))


def _stages(model: Any) -> list[tuple[str, list[str]]]:
    """Backbone parameter names grouped into stages, bottom (stem) to top."""
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
        stages = [(f"stage {k}", names) for k, names in sorted(groups.items())]
    except Exception:  # noqa: BLE001 - models without a group matcher: one stage per child
        stages = [(n, [f"{n}.{p}" for p, _ in m.named_parameters()])
                  for n, m in model.named_children()]
    return [(name, names) for name, names in stages if names]


def finetune(model: Any, pre: Preprocess, train: tuple[Sequence[Any], Sequence[int]],
             val: tuple[Sequence[Any], Sequence[int]], head: tuple[np.ndarray, np.ndarray],
             cfg: FinetuneConfig, workdir: Path,
             on_epoch: Callable[[dict[str, float]], None] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` (a timm backbone without classifier) with a linear head.

    Args:
        pre: preprocessing at the fine-tuning image size.
        train, val: ``(paths, labels)`` of readable images; labels in ``0..K-1``.
        head: initial ``(weight (K, D), bias (K,))``, e.g. from a linear probe.
        workdir: checkpoints (``last.ckpt`` for ``resume``, the best epoch).
        on_epoch: called with each epoch's metrics row (on rank 0).
    """
    before_torch()
    from lightning.pytorch.callbacks import ModelCheckpoint  # imports lightning, torch

    size_torch()

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    chosen = _chosen_stages(model, cfg.mode)
    trainable = {n for _, names in chosen for n in names}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    net, train_dl, val_dl, cfg = _inputs(model, pre, train, val, cfg)
    class_weight = _class_weight(train[1], head[0].shape[0])

    def make(c: FinetuneConfig) -> Any:
        return module_class()(net, head[0].astype(np.float32), head[1].astype(np.float32),
                               None, c, class_weight, max(1, len(train_dl)))
    cfg = _fit_to_time_limit(cfg, make, train_dl, len(val[0]))
    module = make(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    best = ModelCheckpoint(dirpath=workdir, filename="best", monitor="val_accuracy",
                           mode="max", save_last=True, save_top_k=1)
    history: list[dict[str, float]] = []
    log = workdir / "history.csv"  # every epoch so far, so that --resume keeps them all
    earlier = read_metrics_csv(log) if cfg.resume else []

    def record(row: dict[str, float]) -> None:
        write_metrics_csv([r for r in earlier if r["epoch"] < history[0]["epoch"]]
                          + history, log)
        if on_epoch is not None:
            on_epoch(row)
    trainer = _trainer(cfg, workdir, best, history, record)
    _fit(trainer, module, train_dl, val_dl, cfg, workdir)
    return _result(trainer, module, model, best, history, earlier, chosen)


def _inputs(model: Any, pre: Preprocess, train: tuple[Sequence[Any], Sequence[int]],
            val: tuple[Sequence[Any], Sequence[int]], cfg: FinetuneConfig
            ) -> tuple[Any, Any, Any, FinetuneConfig]:
    """``(network to train, train loader, val loader, cfg)``: the unfrozen top of ``model``
    over cached trunk activations (:mod:`headstart.fit.cached`; the time limit less the
    caching time), else the whole model over images decoded each epoch."""
    from .cached import cached_run

    run = cached_run(model, pre, train, val, cfg.augment, cfg.batch_size,
                     augmenter(pre, cfg.augment) if cfg.augment != "none" else None)
    if run is None:
        return (model, *_loaders(pre, train, val, cfg), cfg)
    if cfg.max_minutes:
        cfg = replace(cfg, max_minutes=max(cfg.max_minutes - run.seconds / 60,
                                           0.2 * cfg.max_minutes))
    return run.top, run.train_dl, run.val_dl, cfg


def _chosen_stages(model: Any, mode: str) -> list[tuple[str, list[str]]]:
    """The ``(stage, parameter names)`` that ``mode`` unfreezes (``last-3`` unless N or all)."""
    parsed = parse_mode(mode)
    stages = _stages(model)
    if parsed == "all":
        return stages
    return stages[-int(parsed if isinstance(parsed, int) else 3):]


def _loaders(pre: Preprocess, train: tuple[Sequence[Any], Sequence[int]],
             val: tuple[Sequence[Any], Sequence[int]], cfg: FinetuneConfig) -> tuple[Any, Any]:
    """``(train, val)`` DataLoaders: shuffled (seed 0), augmented training batches; plain val."""
    import torch

    train_tf, eval_tf = transforms(pre, cfg.augment)
    workers = cfg.num_workers if cfg.num_workers is not None else \
        (0 if worker_count() <= 2 else min(4, worker_count() // 2))
    loader = torch.utils.data.DataLoader
    g = torch.Generator().manual_seed(0)
    train_dl = loader(Images(*train, train_tf), batch_size=cfg.batch_size, shuffle=True,
                      num_workers=workers, drop_last=len(train[0]) > cfg.batch_size,
                      generator=g, persistent_workers=workers > 0)
    val_dl = loader(Images(*val, eval_tf), batch_size=cfg.batch_size * 2,
                    num_workers=workers, persistent_workers=workers > 0)
    return train_dl, val_dl


def _class_weight(labels: Sequence[int], k: int) -> np.ndarray:
    """``(K,)`` class-balanced loss weights ``N / (K * n_k)`` (empty classes count as 1)."""
    counts = np.bincount(np.asarray(labels), minlength=k).astype(np.float32)
    return len(labels) / (k * np.maximum(counts, 1))


def _fit_to_time_limit(cfg: FinetuneConfig, make: Callable[[FinetuneConfig], Any],
                       train_dl: Any, n_val: int) -> FinetuneConfig:
    """``cfg`` with fewer ``max_epochs`` when the epochs would not fit in ``max_minutes``."""
    if cfg.max_minutes and not cfg.resume:
        # fit the schedule to the time limit, so that the cosine decay ends within it
        per_epoch = epoch_seconds(make(cfg), train_dl, n_val)
        fit = max(1, int(0.85 * cfg.max_minutes * 60 / per_epoch))
        if fit < cfg.max_epochs:
            logger.info("time limit: %d epochs of about %.0f s", fit, per_epoch)
            cfg = replace(cfg, max_epochs=fit)
    return cfg


def _trainer(cfg: FinetuneConfig, workdir: Path, best: Any, history: list[dict[str, float]],
             record: Callable[[dict[str, float]], None]) -> Any:
    """The Lightning ``Trainer``: ``cfg``'s flags, best checkpoint, early stop, history."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    return L.Trainer(
        max_epochs=cfg.max_epochs, accelerator=cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy, num_nodes=cfg.num_nodes,
        precision=cfg.precision or ("16-mixed" if torch.cuda.is_available() else "32-true"),
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        callbacks=[best, EarlyStopping("val_accuracy", mode="max", patience=cfg.patience),
                   history_callback(history, record)],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False, default_root_dir=str(workdir),
        check_val_every_n_epoch=1 if cfg.validate_each_epoch else cfg.max_epochs)


def _fit(trainer: Any, module: Any, train_dl: Any, val_dl: Any, cfg: FinetuneConfig,
         workdir: Path) -> None:
    """Train; from ``last.ckpt`` with ``resume``, else after rank 0 deletes old checkpoints."""
    ckpt = workdir / "last.ckpt"
    if cfg.resume and not ckpt.is_file():
        logger.warning("resume: no checkpoint in %s; starting from the beginning", workdir)
    elif not cfg.resume:
        for old in workdir.glob("*.ckpt"):
            if trainer.is_global_zero:
                old.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        # frozen stages are in eval mode on purpose (their BatchNorm keeps ImageNet's
        # statistics), and the checkpoint folder is ours: Lightning's lines say otherwise
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is "
                                "not empty.*")
        trainer.fit(module, train_dl, val_dl,
                    ckpt_path=str(ckpt) if cfg.resume and ckpt.is_file() else None)


def _result(trainer: Any, module: Any, model: Any, best: Any, history: list[dict[str, float]],
            earlier: list[dict[str, float]], chosen: list[tuple[str, list[str]]]
            ) -> FinetuneResult:
    """The best epoch's frozen CPU backbone (``model``, which ``module`` trained all or the
    top of), head ``(K, D)``, ``(K,)``, and all epochs' rows."""
    import torch

    restore = best.best_model_path and module.cfg.restore_best
    if restore:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
    best_acc = float(best.best_model_score) if best.best_model_score is not None else \
        float("nan")
    if not restore and history:
        best_acc = history[-1]["val_accuracy"]
    if history:  # epochs run before an interruption, then the resumed ones
        history[:0] = [r for r in earlier if r["epoch"] < history[0]["epoch"]]
    best_epoch = (max(history, key=lambda r: r["val_accuracy"])["epoch"] if restore
                  else history[-1]["epoch"]) if history else 0
    module.eval()
    model = model.cpu().eval().requires_grad_(False).to(memory_format=torch.contiguous_format)
    return FinetuneResult(
        model=model, head_weight=module.head.weight.detach().cpu().numpy().copy(),
        head_bias=module.head.bias.detach().cpu().numpy().copy(), val_accuracy=best_acc,
        history=history, unfrozen=[n for n, _ in chosen], epochs=trainer.current_epoch,
        best_epoch=best_epoch)


def _linear_init(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear-probe head ``(W (K, D), b (K,))`` on raw features (standardisation folded in)."""
    h = LinearHead(Cs=(0.01, 0.1), cv=3, random_state=seed, normalize="standard").fit(X, y)
    w = h.coef_ / h.scale_
    return w.astype(np.float32), (h.intercept_ - w @ h.mean_).astype(np.float32)


@dataclass
class StageResult:
    """Outcome of :func:`finetune_stage` (or :func:`headstart.fit.scratch.scratch_stage`): the
    stage's record, the per-epoch history, and the backbone and linear head it trained
    with their validation accuracy (None when the head-only model was kept)."""

    summary: FinetuneSummary | ScratchSummary
    history: list[dict[str, float]]
    backbone: Any = None
    head: LinearHead | None = None
    val_accuracy: float = float("nan")
    val_images: int = 0


def skip_reason(cfg: FinetuneConfig, y: np.ndarray, is_train: np.ndarray) -> str | None:
    """Why :func:`finetune_stage` would not fine-tune (``auto`` with fewer than
    :data:`AUTO_MIN_PER_CLASS` training images in a class), or None when it would."""
    counts = np.bincount(y[is_train])
    if parse_mode(cfg.mode) == "auto" and counts.min() < AUTO_MIN_PER_CLASS:
        return (f"finetune='auto': a class has {int(counts.min())} training images, fewer "
                f"than {AUTO_MIN_PER_CLASS}; kept the head only")
    return None


def schedule(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` as it runs: ``auto`` within :data:`AUTO_MAX_MINUTES` unless ``max_minutes``
    says otherwise, for all ``max_epochs`` (no early stopping) and keeping the last epoch,
    so that the validation images only judge; other modes as given."""
    if parse_mode(cfg.mode) != "auto":
        return cfg
    return replace(cfg, max_minutes=cfg.max_minutes or AUTO_MAX_MINUTES,
                   patience=cfg.max_epochs, restore_best=False)


def finetune_stage(backbone: Any, paths: Sequence[Any], y: np.ndarray, is_train: np.ndarray,
                   head_only_accuracy: float, cfg: FinetuneConfig, cache_root: Path,
                   features: Callable[[Any, list[Any]], np.ndarray], seed: int = 0,
                   val_fraction: float = 0.2,
                   on_epoch: Callable[[dict[str, float]], None] | None = None
                   ) -> StageResult:
    """Decide, fine-tune, compare with the head-only model, keep the better.

    Args:
        backbone: the frozen :class:`~headstart.backbone.build.Backbone` of the head-only model.
        paths, y, is_train: the readable images, labels ``(N,)`` and which are training
            rows (the others are validation rows; without any, a stratified
            ``val_fraction`` of the training rows is held out, the same rows the head-only
            accuracy was measured on).
        head_only_accuracy: validation accuracy of the head-only model on those rows.
        features: ``features(backbone, paths) -> (N, D)`` (cached frozen features).
    """
    import copy

    summary = FinetuneSummary(mode=cfg.mode, val_accuracy_head_only=head_only_accuracy)
    summary.reason = skip_reason(cfg, y, is_train)
    if summary.reason is not None:
        return StageResult(summary, [])
    cfg = schedule(cfg)
    train_rows, val_rows = split_rows(y, is_train, val_fraction, seed)
    size = cfg.image_size or choose_image_size([paths[i] for i in train_rows],
                                               backbone.preprocess.size)
    pre = Preprocess(size, backbone.preprocess.crop_pct, backbone.preprocess.interpolation,
                     backbone.preprocess.mean, backbone.preprocess.std)
    X = features(backbone.with_preprocess(pre), [paths[i] for i in train_rows])
    w, b = _linear_init(X, y[train_rows], seed)
    key = weights_digest(backbone.model)[:8] + f"-{size}-{cfg.mode}-{len(paths)}"
    t0 = time.perf_counter()
    res = finetune(copy.deepcopy(backbone.model), pre,
                   ([paths[i] for i in train_rows], y[train_rows].tolist()),
                   ([paths[i] for i in val_rows], y[val_rows].tolist()), (w, b), cfg,
                   cache_root / "finetune" / key, on_epoch)
    tuned, head, accuracy = measured(backbone.name, backbone.timm_name, "finetuned", pre, res,
                                     features, [paths[i] for i in val_rows], y[val_rows])
    clear, why = clear_gain(head_only_accuracy, accuracy, len(val_rows))
    kept = clear or cfg.keep == "finetuned"
    summary = replace(summary, ran=True, image_size=size, unfrozen=res.unfrozen,
                      epochs=res.epochs, best_epoch=res.best_epoch,
                      train_images=int(len(train_rows)), val_images=int(len(val_rows)),
                      minutes=round((time.perf_counter() - t0) / 60, 2),
                      weights_digest=weights_digest(res.model, res.head_weight,
                                                     res.head_bias),
                      config=asdict(cfg), val_accuracy_finetuned=accuracy,
                      kept="finetuned" if kept else "head-only",
                      keep_reason=why if cfg.keep == "better" else None)
    out = StageResult(summary, res.history)
    if kept:
        out.backbone, out.head = tuned, head
        out.val_accuracy, out.val_images = accuracy, int(len(val_rows))
    return out


def clear_gain(head: float, tuned: float, images: int,
               margin_se: float = KEEP_MARGIN_SE) -> tuple[bool, str]:
    """Whether validation accuracy ``tuned`` beats ``head`` (both on the same ``images``)
    by at least two images and by more than ``margin_se`` standard errors of the
    difference, and why, in words."""
    p = (head + tuned) / 2
    margin = max(margin_se * math.sqrt(max(p * (1 - p), 1e-4) * 2 / max(images, 1)),
                 1.5 / max(images, 1))
    gain = tuned - head
    if gain > margin:
        return True, (f"fine-tuning gained {gain:+.1%} on {images} validation images, more "
                      f"than the {margin:.1%} that chance alone could give")
    return False, (f"fine-tuning {'gained' if gain > 0 else 'changed'} {gain:+.1%} on "
                   f"{images} validation images, within the {margin:.1%} that chance "
                   "alone could give; the simpler head-only model is kept")


def measured(name: str, timm_name: str, kind: str, pre: Preprocess, res: FinetuneResult,
             features: Callable[[Any, list[Any]], np.ndarray], val_paths: list[Any],
             y_val: np.ndarray) -> tuple[Any, LinearHead, float]:
    """The trained backbone and linear head as a model, and its validation accuracy measured
    exactly as ``headstart evaluate`` will (same engine, same decoding)."""
    from ..backbone.build import Backbone

    tuned = Backbone(name, timm_name, pre,
                     f"{kind}-{weights_digest(res.model)}", int(res.model.num_features),
                     model=res.model)
    Xv = features(tuned, val_paths)
    head = LinearHead.from_weights(res.head_weight, res.head_bias)
    accuracy = float(np.mean(head.predict(Xv) == y_val))
    return tuned, head, accuracy


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The rows written by :func:`write_metrics_csv` (none if the file is missing, not a
    regular file, or not numbers)."""
    try:
        text = read_regular(path, 16 << 20).decode("utf-8")
        return [{k: float(v) for k, v in r.items() if k is not None}
                for r in csv.DictReader(io.StringIO(text, newline=""))]
    except (FileProblem, UnicodeDecodeError, ValueError, TypeError):
        return []


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    """One row per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr,
    seconds (a column an earlier run's rows lack is written as nan)."""
    if not history:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in history for k in r)),
                           restval="nan")
        w.writeheader()
        w.writerows(history)
