"""Training a compact CNN from random initialisation: for when transfer learning is the
wrong tool (images far from ImageNet, or enough data to learn their own features).

Same data pipeline, augmentation, early stopping and Lightning machinery as fine-tuning
(:func:`headstart.fit.finetune.finetune` with every stage trainable and a randomly initialised
linear head), same model bundle, so ``predict``, ``evaluate`` and export work unchanged.

Rules: the network is timm's ``resnet10t`` (4.9 M parameters) without pretrained weights;
images train at their median shorter side rounded up to a multiple of 32, between 32 and
128 px (28 px digits train at 32 px), normalised with mean = std = 0.5; batches of 128 at
64 px and below (else the configured size); the backbone learns at the full learning rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ..backbone.build import Preprocess
from ..io.dataset import median_short_side, split_rows
from ..fit.finetune import FinetuneConfig, StageResult, finetune, measured
from ..fit.summary import ScratchSummary

__all__ = ["SCRATCH_ARCH", "scratch_image_size", "scratch_stage"]

SCRATCH_ARCH = "resnet10t"


def scratch_image_size(paths: Sequence[Any]) -> int:
    """Input size for training from scratch (rule in the module docstring)."""
    m = median_short_side(paths) or 128.0
    return int(min(128, max(32, 32 * math.ceil(m / 32))))


def scratch_stage(paths: Sequence[Any], y: np.ndarray, is_train: np.ndarray, n_classes: int,
                  cfg: FinetuneConfig, cache_root: Path,
                  features: Callable[[Any, list[Any]], np.ndarray], seed: int = 0,
                  val_fraction: float = 0.2, arch: str = SCRATCH_ARCH,
                  on_epoch: Callable[[dict[str, float]], None] | None = None) -> StageResult:
    """Train ``arch`` from scratch on the training rows, measure it on the validation rows
    (or a held-out ``val_fraction``), and return it as backbone + linear head."""
    import timm
    import torch

    train_rows, val_rows = split_rows(y, is_train, val_fraction, seed)
    size = cfg.image_size or scratch_image_size([paths[i] for i in train_rows])
    pre = Preprocess(size, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    d = int(model.num_features)
    rng = np.random.default_rng(seed)  # a zero head would pass no gradient to the backbone
    head = ((rng.standard_normal((n_classes, d)) / np.sqrt(d)).astype(np.float32),
            np.zeros(n_classes, np.float32))
    run_cfg = replace(cfg, mode="all", backbone_lr_factor=1.0,
                      batch_size=128 if size <= 64 and cfg.batch_size == 32 else cfg.batch_size)
    t0 = time.perf_counter()
    res = finetune(model, pre, ([paths[i] for i in train_rows], y[train_rows].tolist()),
                   ([paths[i] for i in val_rows], y[val_rows].tolist()), head, run_cfg,
                   cache_root / "scratch" / f"{arch}-{size}-{len(paths)}-{seed}", on_epoch)
    tuned, head, accuracy = measured(f"scratch-{arch}", arch, "scratch", pre, res, features,
                                     [paths[i] for i in val_rows], y[val_rows])
    summary = ScratchSummary(arch=arch, image_size=size, epochs=res.epochs,
                             best_epoch=res.best_epoch, train_images=int(len(train_rows)),
                             val_images=int(len(val_rows)), val_accuracy=accuracy,
                             minutes=round((time.perf_counter() - t0) / 60, 2),
                             config=asdict(run_cfg))
    return StageResult(summary, res.history, backbone=tuned, head=head, val_accuracy=accuracy,
                       val_images=int(len(val_rows)))
