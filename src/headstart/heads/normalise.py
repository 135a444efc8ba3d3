"""The linear head's feature normalisations (private), in NumPy and, beside each, the same
maths in PyTorch for export: power-L2 rows, the ImageNet block and the tapped blocks. See
:class:`headstart.heads.linear.LinearHead`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..heads.base import softmax

__all__ = ["NORM_SCALE", "imagenet_block", "power_l2", "tapped_blocks", "torch_imagenet_block",
           "torch_power_l2", "torch_tapped_blocks"]

NORM_SCALE = float(np.sqrt(1280) / 4)  # unit vectors scaled so that C = 1 is a sane default


def power_l2(X: np.ndarray, scale: float = NORM_SCALE) -> np.ndarray:
    """Signed square root of each feature, then each row scaled to length ``scale``: the
    normalisation that works best at few shots (+2 to +4 points over standardising on the
    shared datasets at 1-20 images per class)."""
    Z = np.sign(X) * np.sqrt(np.abs(X))
    return Z * (scale / (np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12))


def imagenet_block(X: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                   scale: float = NORM_SCALE) -> np.ndarray:
    """The square roots of the backbone's ImageNet class probabilities for features ``X``
    ``(N, D)`` (``weight`` ``(M, D)``, ``bias`` ``(M,)``), a row of length ``scale`` like
    :func:`power_l2`: ``(N, M)``. Appended to the features of ImageNet-like images, where
    the pretrained classes carry over (hymenoptera's ants and bees: +2 points at 20 and +4
    at 5 images per class), when cross-validation prefers it."""
    return np.sqrt(softmax(X @ weight.T + bias).astype(np.float64)) * scale


def tapped_blocks(X: np.ndarray, widths: Sequence[int], weight: float) -> np.ndarray:
    """The pooled outputs of intermediate backbone blocks, ``X`` ``(N, sum(widths))``, each
    block power-L2 normalised on its own to a row of length ``weight * NORM_SCALE``:
    ``(N, sum(widths))`` (zeros at weight 0)."""
    bounds = np.cumsum([0, *widths])
    return np.concatenate([weight * power_l2(X[:, a:b]) for a, b in zip(bounds, bounds[1:])],
                          axis=1) if len(widths) else X[:, :0]


def torch_power_l2(f: Any) -> Any:
    """:func:`power_l2` on a ``torch.Tensor`` ``(N, D)``."""
    import torch

    z = torch.sign(f) * torch.sqrt(torch.abs(f))
    return z * (NORM_SCALE / (z.norm(dim=1, keepdim=True) + 1e-12))


def torch_imagenet_block(f: Any, weight: Any, bias: Any) -> Any:
    """:func:`imagenet_block` on ``torch.Tensor`` features and classifier."""
    import torch

    return torch.sqrt(torch.softmax(f @ weight.T + bias, dim=1)) * NORM_SCALE


def torch_tapped_blocks(f: Any, widths: Sequence[int], weight: float) -> Any:
    """:func:`tapped_blocks` on a ``torch.Tensor``."""
    import torch

    return torch.cat([weight * torch_power_l2(b) for b in torch.split(f, list(widths), 1)], 1)
