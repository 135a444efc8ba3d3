"""Lightning internals of fine-tuning (private): the dataset, the transforms, the
LightningModule (backbone + linear head, discriminative learning rates, warmup + cosine,
frozen BatchNorm in frozen stages), the per-epoch history callback and the epoch-time
estimate used to fit a schedule into a time limit. The rules live in
:mod:`headstart.fit.finetune`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..backbone.build import Preprocess
from ..io.decode import read_image

class Images:
    """A torch Dataset of (image tensor, label) from files, with a transform."""

    def __init__(self, paths: Sequence[Any], labels: Sequence[int], transform: Callable) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.paths[i]), int(self.labels[i])


def augmenter(pre: Preprocess, augment: str) -> Callable[[Any], Any]:
    """A decoded image -> one random ``(3, S, S)`` training view (``light``: crops of 60-100%
    of the image and flips; ``strong``: 25-100%, colour jitter, RandAugment, erasing)."""
    import timm.data

    strong = augment == "strong"
    return timm.data.create_transform(
        input_size=(3, pre.size, pre.size), is_training=True,
        scale=(0.25, 1.0) if strong else (0.6, 1.0), hflip=0.5,
        color_jitter=0.4 if strong else 0.0,
        auto_augment="rand-m9-mstd0.5" if strong else None, re_prob=0.25 if strong else 0.0,
        interpolation=pre.interpolation, mean=pre.mean, std=pre.std)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def use_bfloat16() -> bool:
    """True where the CPU has bfloat16 matrix units (AMX or AVX-512 BF16) and
    ``HEADSTART_BF16`` is not ``0``; ``HEADSTART_BF16=1`` forces it on. Without those
    units bfloat16 is emulated and several times slower than float32."""
    env = os.environ.get("HEADSTART_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def inference_view(path: Any, pre: Preprocess) -> Any:
    """One image as a ``(3, S, S)`` float32 tensor, decoded and resized exactly as at
    inference."""
    import torch

    from ..backbone.features import preprocess_image

    return torch.from_numpy(preprocess_image(path, pre))


def weights_digest(model: Any, *arrays: np.ndarray) -> str:
    """Hash of a module's state (and extra arrays): equal hashes, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def transforms(pre: Preprocess, augment: str) -> tuple[Callable, Callable]:
    """``(train, evaluate)``: a path -> a ``(3, S, S)`` tensor, augmented or as at inference."""
    def evaluate(path: Any) -> Any:
        return inference_view(path, pre)

    if augment == "none":
        return evaluate, evaluate
    augmented = augmenter(pre, augment)

    def train(path: Any) -> Any:
        return augmented(read_image(path))
    return train, evaluate


def module_class() -> Any:
    import lightning as L
    import torch
    from torch import nn

    class FinetuneModule(L.LightningModule):
        """Backbone + linear head, with discriminative learning rates."""

        def __init__(self, backbone: nn.Module, weight: np.ndarray, bias: np.ndarray,
                     trainable: set[str] | None, cfg: Any, class_weight: np.ndarray,
                     steps_per_epoch: int) -> None:
            super().__init__()
            _set_up(self, backbone, weight, bias, trainable, cfg, class_weight,
                    steps_per_epoch)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype != torch.float32:  # cached activations are float16
                x = x.float()
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16,
                                enabled=self.bf16 and x.device.type == "cpu"):
                return self.head(self.backbone(x)).float()

        def train(self, mode: bool = True) -> "FinetuneModule":
            super().train(mode)
            for m in self.frozen_bn:  # frozen stages keep their ImageNet statistics
                m.eval()
            return self

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            logits = self(x)
            loss = self.loss(logits, y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(y))
            self.log("train_accuracy", (logits.argmax(1) == y).float().mean(),
                     on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True,
                     batch_size=len(y))
            self.log("val_accuracy", (logits.argmax(1) == y).float().mean(), sync_dist=True,
                     batch_size=len(y))

        def configure_optimizers(self) -> Any:
            return _optimizers(self)

    return FinetuneModule


def _set_up(module: Any, backbone: Any, weight: np.ndarray, bias: np.ndarray,
            trainable: set[str] | None, cfg: Any, class_weight: np.ndarray,
            steps_per_epoch: int) -> None:
    """Attach backbone (channels-last; parameters named in ``trainable`` train, or as they
    are when None), head (``weight`` ``(K, D)``, ``bias`` ``(K,)``), frozen BNs, loss."""
    import torch
    from torch import nn

    module.backbone = backbone.to(memory_format=torch.channels_last)
    module.bf16 = use_bfloat16()
    module.head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        module.head.weight.copy_(torch.from_numpy(weight))
        module.head.bias.copy_(torch.from_numpy(bias))
    for name, p in module.backbone.named_parameters():
        if trainable is not None:
            p.requires_grad_(name in trainable)
    module.frozen_bn = [m for m in module.backbone.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        and not any(p.requires_grad for p in m.parameters())]
    module.cfg = cfg
    module.steps_per_epoch = steps_per_epoch
    module.loss = nn.CrossEntropyLoss(weight=torch.as_tensor(class_weight, dtype=torch.float32),
                                      label_smoothing=cfg.label_smoothing)
    module._val: list[tuple[float, float, int]] = []


def _optimizers(module: Any) -> dict[str, Any]:
    """AdamW over head and trainable backbone groups, stepped by warmup then cosine."""
    import torch

    cfg = module.cfg
    groups = [{"params": list(module.head.parameters()), "lr": cfg.lr}]
    backbone = [p for p in module.backbone.parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_factor})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_epochs * module.steps_per_epoch))
    total = max(warm + 1, cfg.max_epochs * module.steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / (total - warm))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def history_callback(history: list[dict[str, float]],
                      on_epoch: Callable[[dict[str, float]], None] | None) -> Any:
    import lightning as L

    class History(L.Callback):
        t0 = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            m = trainer.callback_metrics  # validation of this epoch has run already
            row = {"epoch": trainer.current_epoch + 1,
                   "train_loss": float(m.get("train_loss", float("nan"))),
                   "train_accuracy": float(m.get("train_accuracy", float("nan"))),
                   "val_loss": float(m.get("val_loss", float("nan"))),
                   "val_accuracy": float(m.get("val_accuracy", float("nan"))),
                   "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
                   "seconds": round(time.perf_counter() - self.t0, 2)}
            history.append(row)
            if on_epoch is not None and trainer.is_global_zero:
                on_epoch(row)

    return History()


def epoch_seconds(module: Any, loader: Any, n_val: int, steps: int = 3) -> float:
    """Estimated seconds of one epoch (training steps + validation), timed on a copy."""
    import copy

    import torch

    probe = copy.deepcopy(module)
    probe.train()
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.0)
    batches = iter(loader)
    times = []
    for _ in range(min(steps + 1, len(loader))):
        x, y = next(batches)
        t = time.perf_counter()
        opt.zero_grad()
        probe.loss(probe(x), y).backward()
        opt.step()
        times.append((time.perf_counter() - t) / len(y))
    per_image = float(np.median(times[1:] if len(times) > 1 else times))
    return per_image * len(loader.dataset) + per_image / 3 * n_val
