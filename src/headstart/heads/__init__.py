"""Heads: classifiers on frozen ``(N, D)`` feature arrays (scikit-learn API)."""

from .linear import HEADS, AutoHead, LinearHead, head_from_state, make_head
from .mlp import MLPHead

__all__ = ["HEADS", "AutoHead", "LinearHead", "MLPHead", "head_from_state", "make_head"]
