"""How far images are from a backbone's pretraining domain (ImageNet photos).

:func:`domain_gap` measures it two ways, from the pooled features alone: the confidence of
the backbone's original ImageNet classifier, and the distance of the features from
reference statistics of natural photos shipped in ``headstart/reference``. ``train`` warns
when the images are far; ``advise`` reasons from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone, is_packaged
from .heads import softmax
from .summary import DomainGap

__all__ = ["GAP_FAR", "GAP_NEAR", "domain_gap"]

# Feature distance scale, calibrated on the shared datasets with efficientnet_lite0:
# hymenoptera (the reference itself) 0.96, safari photos 1.97, MNIST digits 5.67.
GAP_NEAR, GAP_FAR = 3.0, 4.5


def domain_gap(backbone: Backbone, X: Any) -> DomainGap:
    """How far images sit from the backbone's pretraining domain (ImageNet photos).

    Args:
        X: ``(N, D)`` pooled features of the images under ``backbone``.

    Returns:
        ``imagenet_max_prob``: mean top-1 probability of the original ImageNet head (photos
        of ImageNet-like things: 0.4-0.7; MNIST digits: 0.15); ``imagenet_entropy``: mean
        entropy of its 1000-way distribution over log(1000) (0.2-0.45 vs 0.68);
        ``feature_distance``: root-mean-square z-score of each image's features against
        reference statistics of natural photos shipped with the package, averaged over
        images (0.96-1.97 vs 5.67); ``level``: ``near`` (< 3.0), ``moderate`` or ``far``
        (>= 4.5) from the feature distance, else from the ImageNet confidence (near above
        0.3, far below 0.2); None values where the backbone lacks the head or reference.
    """
    X = np.asarray(X, dtype=np.float32)
    out: dict[str, Any] = {"imagenet_max_prob": None, "imagenet_entropy": None,
                           "feature_distance": None, "level": None}
    if backbone.imagenet_head is not None and len(X):
        w, b = backbone.imagenet_head
        p = softmax(X @ w.T + b)
        out["imagenet_max_prob"] = float(p.max(axis=1).mean())
        out["imagenet_entropy"] = float((-(p * np.log(p + 1e-12)).sum(axis=1)).mean()
                                        / np.log(p.shape[1]))
    ref = Path(__file__).with_name("reference") / f"{backbone.name}.safetensors"
    if ref.is_file() and len(X) and is_packaged(backbone):
        from safetensors.numpy import load_file

        r = load_file(str(ref))
        if r["mean"].shape == X.shape[1:]:
            z = (X - r["mean"]) / (r["std"] + 1e-3)
            out["feature_distance"] = float(np.sqrt((z ** 2).mean(axis=1)).mean())
    d, pmax = out["feature_distance"], out["imagenet_max_prob"]
    if d is not None:
        out["level"] = "near" if d < GAP_NEAR else "far" if d >= GAP_FAR else "moderate"
    elif pmax is not None:
        out["level"] = "near" if pmax > 0.3 else "far" if pmax < 0.2 else "moderate"
    return DomainGap(**out)
