"""How far images are from a backbone's pretraining domain (ImageNet photos).

:func:`domain_gap` measures it from the pooled features alone: how close they come to any
of the 1000 class directions of the backbone's original ImageNet classifier (the level is
read from that), with the classifier's confidence and the distance of the features from
reference statistics of natural photos shipped in ``headstart/reference`` for the record.
``train`` warns when the images are far; ``advise`` reasons from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..backbone.build import Backbone, is_packaged
from ..heads import softmax
from ..fit.summary import DomainGap

__all__ = ["SIMILARITY_FAR", "SIMILARITY_NEAR", "domain_gap", "explain"]

# The level comes from ``imagenet_similarity`` (see domain_gap). Calibrated with
# efficientnet_lite0 on every shared dataset (40 images a class) and three synthetic
# extremes: hymenoptera 0.297, safari 0.271 | blood cells 0.208 | textures 0.184, aerial
# scenes 0.171, MNIST digits 0.171, steel defects 0.169, random noise 0.174, flat colours
# 0.145, colour gradients 0.138 (6 images a class move these by up to 0.01).
SIMILARITY_NEAR, SIMILARITY_FAR = 0.24, 0.183


def domain_gap(backbone: Backbone, X: Any) -> DomainGap:
    """How far images sit from the backbone's pretraining domain (ImageNet photos).

    Args:
        X: ``(N, D)`` pooled features of the images under ``backbone``.

    Returns:
        ``imagenet_similarity``: the mean, over images, of the largest cosine similarity
        between an image's features and the 1000 class directions of the backbone's
        original ImageNet classifier: how much the image looks like *some* ImageNet class
        (ImageNet-like photos 0.27-0.30; microscopy 0.21; textures 0.19; aerial scenes,
        digits, steel surfaces, noise and flat colours 0.14-0.18). ``level``: ``near``
        (>= 0.24), ``far`` (< 0.183) or ``moderate``. Also ``imagenet_max_prob`` (mean top-1
        probability of that classifier), ``imagenet_entropy`` (mean entropy over
        log(1000)) and ``feature_distance`` (root-mean-square z-score against reference
        statistics of natural photos shipped in ``headstart/reference``), for the record;
        None values where the backbone lacks the head or reference.
    """
    X = np.asarray(X, dtype=np.float32)
    X = backbone.final(X)
    out: dict[str, Any] = {"imagenet_max_prob": None, "imagenet_entropy": None,
                           "feature_distance": None, "imagenet_similarity": None,
                           "level": None}
    if backbone.imagenet_head is not None and len(X):
        w, b = backbone.imagenet_head
        p = softmax(X @ w.T + b)
        out["imagenet_max_prob"] = float(p.max(axis=1).mean())
        out["imagenet_entropy"] = float((-(p * np.log(p + 1e-12)).sum(axis=1)).mean()
                                        / np.log(p.shape[1]))
        unit = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)
        directions = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
        sim = float((unit @ directions.T).max(axis=1).mean())
        out["imagenet_similarity"] = sim
        out["level"] = ("near" if sim >= SIMILARITY_NEAR else
                        "far" if sim < SIMILARITY_FAR else "moderate")
    ref = Path(__file__).with_name("reference") / f"{backbone.name}.safetensors"
    if ref.is_file() and len(X) and is_packaged(backbone):
        from safetensors.numpy import load_file

        r = load_file(str(ref))
        if r["mean"].shape == X.shape[1:]:
            z = (X - r["mean"]) / (r["std"] + 1e-3)
            out["feature_distance"] = float(np.sqrt((z ** 2).mean(axis=1)).mean())
    return DomainGap(**out)


def explain(gap: DomainGap) -> str:
    """One line: the level, the number and what it means."""
    if gap.imagenet_similarity is None:
        return "not measured (the backbone has no ImageNet classifier to compare with)"
    return (f"{gap.level}: ImageNet similarity {gap.imagenet_similarity:.3f} (ImageNet-like "
            f"photos 0.27-0.30; near >= {SIMILARITY_NEAR}, far < {SIMILARITY_FAR})")
