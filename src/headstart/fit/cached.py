"""Fine-tuning without recomputing what does not change (private; used by
:func:`headstart.fit.finetune.finetune`).

The stages below the first unfrozen one never change during fine-tuning, so their output
(the activations at the cut) is computed once per image, and once per augmented view when
augmentation is on, before the first epoch; every epoch then runs only the unfrozen stages
on those cached activations. Decoding and resizing happen once.

Rules:

* the backbone is split where its forward is a plain chain of modules (timm's CNNs:
  stem, each block, the final conv), checked on a random input: the split model must give
  the same features as the whole one, else the images are decoded and run through the
  whole network each epoch as before;
* views per training image: 1 without augmentation, :data:`VIEWS` with it (each epoch
  picks one at random), fewer when the cache would pass :data:`CACHE_BYTES`; with
  augmentation and room for fewer than 2 views, nothing is cached;
* activations are stored as float16 (float32 if they exceed its range), the network
  runs channels-last, and in bfloat16 autocast where the CPU has bfloat16 matrix units
  (:func:`headstart.fit.training.use_bfloat16`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..backbone.build import Preprocess
from ..io.decode import read_image
from .training import inference_view, weights_digest

__all__ = ["CACHE_BYTES", "VIEWS", "CachedRun", "cached_run", "split_backbone"]

logger = logging.getLogger(__name__)

VIEWS = 4
CACHE_BYTES = 1 << 30
_HEAD_PARTS = ("global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "head_dist")


def _chain(model: Any) -> tuple[list[tuple[str, Any]], list[Any]] | None:
    """``model``'s feature path as ``[(name, module)]`` in order (one level of
    ``Sequential`` / ``ModuleList`` unrolled) and its head modules; None when the model
    has no ``forward_head``."""
    from torch import nn

    if not callable(getattr(model, "forward_head", None)):
        return None
    chain: list[tuple[str, Any]] = []
    head: list[Any] = []
    for name, child in model.named_children():
        if name in _HEAD_PARTS:
            head.append(child)
        elif isinstance(child, (nn.Sequential, nn.ModuleList)):
            chain += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            chain.append((name, child))
    return chain, head


def split_backbone(model: Any, size: int) -> tuple[Any, Any] | None:
    """``(trunk, top)`` with ``top(trunk(x)) == model(x)``: ``trunk`` the modules below
    the first one with a trainable parameter, ``top`` the rest with the model's pooling
    head (sharing ``model``'s modules, so training ``top`` trains ``model``). None when
    ``model``'s forward is not that chain (checked in eval mode on a ``(2, 3, size,
    size)`` random input)."""
    import torch
    from torch import nn

    parts = _chain(model)
    if parts is None:
        return None
    chain, head = parts
    cut = next((i for i, (_, m) in enumerate(chain)
                if any(p.requires_grad for p in m.parameters())), len(chain))
    trunk = nn.Sequential(*[m for _, m in chain[:cut]])
    top = _Top([m for _, m in chain[cut:]], head, model.forward_head)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x = torch.randn(2, 3, size, size)
            same = torch.allclose(top(trunk(x)), model(x), rtol=1e-3, atol=1e-4)
    except Exception as e:  # noqa: BLE001 - a chain that does not run is not the model
        logger.debug("backbone is not a plain chain: %s", e)
        same = False
    finally:
        model.train(was_training)
    return (trunk, top) if same else None


def _top_class() -> Any:
    from torch import nn

    class Top(nn.Module):
        """The unfrozen modules of a chain, then the model's pooling head."""

        def __init__(self, blocks: list[Any], head: list[Any], forward_head: Callable) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(blocks)
            self.head_parts = nn.ModuleList(head)  # registered, so their parameters train
            self.forward_head = forward_head

        def forward(self, x: Any) -> Any:
            for b in self.blocks:
                x = b(x)
            return self.forward_head(x)

    return Top


def _Top(blocks: list[Any], head: list[Any], forward_head: Callable) -> Any:
    return _top_class()(blocks, head, forward_head)


@dataclass
class CachedRun:
    """What :func:`cached_run` built: the module to train (``top``), the loaders over
    cached activations, and the cache's size."""

    top: Any
    train_dl: Any
    val_dl: Any
    views: int
    bytes: int
    seconds: float


def cached_run(model: Any, pre: Preprocess, train: tuple[Sequence[Any], Sequence[int]],
               val: tuple[Sequence[Any], Sequence[int]], augment: str, batch_size: int,
               augmented: Callable[[Any], Any] | None, seed: int = 0) -> CachedRun | None:
    """Split ``model``, cache its trunk's activations for ``train`` (augmented views made
    by ``augmented(decoded image)``, or the inference view without augmentation) and
    ``val`` (the inference view), and return loaders over them; None where the model
    cannot be split or the cache would not fit (rules in the module docstring)."""
    import time

    import torch

    split = split_backbone(model, pre.size)
    if split is None or not train[0]:
        return None
    trunk, top = split
    t0 = time.perf_counter()
    one = _trunk_outputs(trunk, [inference_view(train[0][0], pre)])[0]
    per_view = int(one.numel()) * 2 * len(train[0])
    views = 1 if augment == "none" else int(min(VIEWS, CACHE_BYTES // max(per_view, 1)))
    if views < 1 or (augment != "none" and views < 2):
        logger.info("fine-tuning cache would not fit (%d MB a view): decoding every epoch",
                    per_view >> 20)
        return None

    def train_views(path: Any) -> list[Any]:
        img = read_image(path)  # decoded once, augmented ``views`` times
        return [augmented(img) for _ in range(views)]  # type: ignore[misc]
    acts = _plain_cache(trunk, train[0], pre) if augment == "none" else \
        _cache(trunk, train[0], train_views)  # (N, V, ...)
    val_acts = _plain_cache(trunk, val[0], pre)
    loader = torch.utils.data.DataLoader
    g = torch.Generator().manual_seed(seed)
    train_dl = loader(_Views(acts, train[1], seed), batch_size=batch_size, shuffle=True,
                      drop_last=len(train[0]) > batch_size, generator=g)
    val_dl = loader(_Views(val_acts, val[1], seed), batch_size=batch_size * 2)
    size = int(acts.numel() * acts.element_size() + val_acts.numel() * val_acts.element_size())
    seconds = time.perf_counter() - t0
    logger.info("fine-tuning cache: %d view(s), %d MB, %.1f s", views, size >> 20, seconds)
    return CachedRun(top, train_dl, val_dl, views, size, seconds)


def _trunk_outputs(trunk: Any, inputs: list[Any], batch: int = 32) -> list[Any]:
    """The trunk's outputs for ``inputs`` (``(3, S, S)`` tensors), in eval mode."""
    import torch

    trunk.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            x = torch.stack(inputs[i:i + batch]).contiguous(memory_format=torch.channels_last)
            out += list(trunk(x).contiguous())
    return out


def _cache(trunk: Any, paths: Sequence[Any], views_of: Callable[[Any], list[Any]],
           batch: int = 32) -> Any:
    """``(N, V, ...)`` trunk outputs of each image's ``V`` views (``views_of(path)``), as
    float16 (float32 past float16's range); images decoded a batch at a time."""
    import torch

    parts = []
    for i in range(0, len(paths), batch):
        views = [views_of(p) for p in paths[i:i + batch]]
        out = _trunk_outputs(trunk, [v for vs in views for v in vs], batch)
        parts.append(torch.stack(out).reshape(len(views), len(views[0]), *out[0].shape))
    acts = torch.cat(parts)
    return acts.half() if float(acts.abs().max()) < 6e4 else acts


def _plain_cache(trunk: Any, paths: Sequence[Any], pre: Preprocess) -> Any:
    """``(N, 1, ...)`` trunk outputs of the inference views, as :func:`_cache`; each one
    remembered for the process (:data:`_MEMO`, up to :data:`MEMO_BYTES`), keyed by the
    trunk's weights, the preprocessing and the file (path, size, modification time), so
    that runs over the same images (``advise``'s splits and sizes) compute it once."""
    import torch

    key = _trunk_key(trunk, pre)
    keys = [(key, *_file_key(p)) for p in paths]
    missing = [i for i, k in enumerate(keys) if k not in _MEMO]
    if missing:
        fresh = _cache(trunk, [paths[i] for i in missing], lambda p: [inference_view(p, pre)])
        for i, act in zip(missing, fresh):
            _MEMO.put(keys[i], act)
    out = [_MEMO.get(k) for k in keys]
    if any(a is None for a in out):  # the memo was too small to hold them all
        return _cache(trunk, paths, lambda p: [inference_view(p, pre)])
    return torch.stack(out)


MEMO_BYTES = 512 << 20


class _Memo:
    """Trunk outputs by key, oldest dropped past :data:`MEMO_BYTES`."""

    def __init__(self) -> None:
        self.items: dict[tuple[Any, ...], Any] = {}
        self.bytes = 0

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self.items

    def get(self, key: tuple[Any, ...]) -> Any:
        return self.items.get(key)

    def put(self, key: tuple[Any, ...], act: Any) -> None:
        act = act.clone()  # not a view that keeps its whole batch alive
        self.items[key] = act
        self.bytes += act.numel() * act.element_size()
        while self.bytes > MEMO_BYTES and self.items:
            old = self.items.pop(next(iter(self.items)))
            self.bytes -= old.numel() * old.element_size()


_MEMO = _Memo()


def _trunk_key(trunk: Any, pre: Preprocess) -> str:
    """The trunk's modules and weights and the preprocessing, as a string."""
    return repr((pre, [type(m).__name__ for m in trunk], weights_digest(trunk)))


def _file_key(path: Any) -> tuple[Any, ...]:
    """``(path, size, mtime)`` of an image file (the path alone when it cannot be read)."""
    try:
        st = os.stat(path)
        return (str(path), st.st_size, st.st_mtime_ns)
    except (OSError, TypeError):
        return (str(path), -1, -1)


def _views_class() -> Any:
    import torch

    class Views(torch.utils.data.Dataset):
        """Cached ``(N, V, ...)`` activations; each read picks one of an image's views."""

        def __init__(self, acts: Any, labels: Sequence[int], seed: int) -> None:
            self.acts, self.labels = acts, list(labels)
            self.rng = np.random.default_rng(seed)

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            v = int(self.rng.integers(self.acts.shape[1])) if self.acts.shape[1] > 1 else 0
            return self.acts[i, v], int(self.labels[i])

    return Views


def _Views(acts: Any, labels: Sequence[int], seed: int) -> Any:
    return _views_class()(acts, labels, seed)
