"""Heads: new classifiers trained on frozen features (the scikit-learn estimator API).

Every head takes features ``X`` ``(N, D)`` and integer labels ``y`` ``(N,)`` and gives
``predict_proba`` ``(N, K)``; it owns its inference (NumPy), its saved form (:meth:`state`
arrays, rebuilt by :func:`head_from_state`) and its export (:meth:`to_torch`). The kinds
are registered in :data:`HEAD_KINDS` (a plugin registers more under the entry-point group
``headstart.heads``); everything that lists or builds heads reads it. A new kind is one
:class:`Head` subclass (see :mod:`headstart.heads.base` for the protocol) and its
registration: nothing else changes.

* :class:`AutoHead` (``auto``, the default): linear, or the MLP where it wins.
* :class:`LinearHead` (``linear``): logistic regression, C chosen by cross-validation.
* :class:`MLPHead` (``mlp``): the article's two-layer head.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..registry import Registry
from .auto import MLP_MIN_PER_CLASS, AutoHead
from .base import FEW_SHOT_MAX_PER_CLASS, Head, softmax, stratified_folds
from .linear import LinearHead
from .mlp import MLPHead

__all__ = ["FEW_SHOT_MAX_PER_CLASS", "HEAD_KINDS", "MLP_MIN_PER_CLASS", "AutoHead", "Head",
           "LinearHead", "MLPHead", "head_from_state", "make_head", "softmax",
           "stratified_folds"]


def _check(entry: object) -> None:
    if not (isinstance(entry, type) and issubclass(entry, Head) and entry.kind):
        raise TypeError(f"a head kind is a Head subclass with a kind, got {entry!r}")


HEAD_KINDS: Registry[type[Head]] = Registry("head kind", "headstart.heads",
                                             name_of=lambda cls: cls.kind, check=_check)
for _cls in (AutoHead, LinearHead, MLPHead):
    HEAD_KINDS.register(_cls)


def make_head(kind: str = "auto", random_state: int = 0,
              imagenet: tuple[np.ndarray, np.ndarray] | None = None,
              blocks: tuple[int, ...] = ()) -> Head:
    """A new, unfitted head of a registered ``kind`` (``imagenet``: the backbone's ImageNet
    classifier, ``blocks``: the widths of tapped blocks, for kinds that use them).

    Raises:
        HeadstartError: an unknown kind, or ``blocks`` for a kind that cannot use them.
    """
    return HEAD_KINDS.get(kind, param="head").create(random_state, imagenet, blocks)


def head_from_state(kind: str, state: dict[str, np.ndarray], n_classes: int,
                    n_features: int) -> Head:
    """Rebuild a fitted head of ``kind`` from its :meth:`~Head.state` arrays, checked to
    map ``n_features`` features to ``n_classes`` logits.

    Raises:
        ModelError: a kind no installed plugin provides (named), or arrays with other keys
            or shapes.
    """
    if kind not in HEAD_KINDS or not HEAD_KINDS.get(kind).saved:
        saved = ", ".join(k for k in HEAD_KINDS.names() if HEAD_KINDS.get(k).saved)
        raise ModelError(f"no installed head kind saves as {kind!r} (installed: {saved}); "
                         "install the plugin that provides it", param="head.kind")
    cls = HEAD_KINDS.get(kind)
    return cls.from_state(state, n_classes, n_features)
