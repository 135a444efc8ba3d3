"""The documented path of the label review: ``headstart.review.review`` (it lives in
:mod:`headstart.insight.review`)."""

from .insight.review import Review, Suggestion, apply, review, undo

__all__ = ["Review", "Suggestion", "apply", "review", "undo"]
