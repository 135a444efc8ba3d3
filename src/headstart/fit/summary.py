"""The training record: what ``fit`` did and measured, as typed dataclasses.

:class:`TrainingSummary` is ``Classifier.summary_`` and the ``summary`` object of
``headstart.json``. :meth:`TrainingSummary.to_dict` writes exactly the keys headstart has
always written (old model directories load with :meth:`TrainingSummary.from_dict`, which
ignores keys it does not know and fills missing ones with defaults), so every reader
(CLI, evaluate, export, serve, report, advise) uses attributes, never string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from ..fit.health import Health

__all__ = ["Calibration", "DomainGap", "FinetuneSummary", "Int8Summary", "ScratchSummary",
           "TrainingSummary"]

T = TypeVar("T")


def _from(cls: type[T], d: Mapping[str, Any] | None) -> T | None:
    """``cls`` from the known keys of ``d`` (None for None)."""
    if d is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names})


def _compact(obj: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``asdict`` without the fields that are None (those the record never had), except
    ``keep``."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None or k in keep}


@dataclass
class Calibration:
    """Temperature scaling: ``temperature``, what it was fitted on (``fitted_on``, how many
    ``images``) and the expected calibration error there before and after (None when
    there was nothing to fit on)."""

    temperature: float = 1.0
    fitted_on: str = ""
    images: int = 0
    ece_before: float | None = None
    ece_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _compact(self)


@dataclass
class DomainGap:
    """How far the images are from ImageNet photos (see :mod:`headstart.fit.domain`)."""

    imagenet_max_prob: float | None = None
    imagenet_entropy: float | None = None
    feature_distance: float | None = None
    imagenet_similarity: float | None = None
    level: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Int8Summary:
    """Validation accuracy with the FP32 and the INT8 backbone, and the engine variant."""

    variant: str
    val_accuracy_fp32: float
    val_accuracy_int8: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinetuneSummary:
    """What fine-tuning did: ``ran`` or not (then ``reason``), its settings and epochs,
    both validation accuracies and which model was ``kept``."""

    mode: str
    ran: bool = False
    val_accuracy_head_only: float = float("nan")
    reason: str | None = None
    image_size: int | None = None
    unfrozen: list[str] | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    train_images: int | None = None
    val_images: int | None = None
    minutes: float | None = None
    weights_digest: str | None = None
    config: dict[str, Any] | None = None
    val_accuracy_finetuned: float | None = None
    kept: str | None = None
    keep_reason: str | None = None

    @property
    def changed_backbone(self) -> bool:
        """True when the fine-tuned backbone replaced the pretrained one."""
        return self.kept == "finetuned"

    def to_dict(self) -> dict[str, Any]:
        return _compact(self)


@dataclass
class ScratchSummary:
    """A network trained from random weights: architecture, input size, epochs, accuracy."""

    arch: str
    image_size: int
    epochs: int
    best_epoch: int
    train_images: int
    val_images: int
    val_accuracy: float
    minutes: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainingSummary:
    """Everything ``fit`` measured, in the order ``headstart.json`` lists it.

    ``val_accuracy`` was measured on ``val_images`` images as ``val_source`` says (a
    validation split, or a held-out fraction before the final refit); ``head_cv_accuracy``
    is each head candidate's cross-validated accuracy; ``head_settings`` what the
    chosen head's fit chose (for the linear head: normalisation, whether the ImageNet
    classes were appended, C, CV accuracy per C); ``runtime`` is the engine that computed
    features (``cache`` when none was needed); ``timings`` the seconds of each
    stage of ``fit`` and ``seconds`` its wall time. Optional stages are None when they did
    not run.
    """

    headstart_version: str = ""
    trained_at: str = ""
    data: str = ""
    data_path: str | None = None
    layout: str = ""
    backbone: str = ""
    head: str = ""
    head_cv_accuracy: dict[str, float] = field(default_factory=dict)
    head_settings: dict[str, Any] = field(default_factory=dict)
    train_counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    features_computed: int = 0
    features_cached: int = 0
    health: Health | None = None
    int8: Int8Summary | None = None
    finetune: FinetuneSummary | None = None
    from_scratch: ScratchSummary | None = None
    domain_gap: DomainGap | None = None
    unlabelled: dict[str, Any] | None = None
    val_images: int = 0
    val_accuracy: float | None = None
    val_source: str = ""
    runtime: str = ""
    calibration: Calibration = field(default_factory=Calibration)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in ``headstart.json`` (``health`` lists capped at 20)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Health):
                v = v.to_dict(limit=20)
            elif dataclasses.is_dataclass(v):
                v = v.to_dict()  # type: ignore[union-attr]
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TrainingSummary":
        """The record of a ``headstart.json`` ``summary`` (any headstart version)."""
        d = dict(d or {})
        s = _from(cls, {k: v for k, v in d.items() if k not in (
            "health", "int8", "finetune", "from_scratch", "domain_gap", "calibration")})
        assert s is not None
        s.health = Health.from_dict(d["health"]) if d.get("health") else None
        s.int8 = _from(Int8Summary, d.get("int8"))
        s.finetune = _from(FinetuneSummary, d.get("finetune"))
        s.from_scratch = _from(ScratchSummary, d.get("from_scratch"))
        s.domain_gap = _from(DomainGap, d.get("domain_gap"))
        s.calibration = _from(Calibration, d.get("calibration")) or Calibration()
        return s

    def head_choice(self) -> str:
        """What the head's fit chose, in words ("" when it chose nothing): e.g.
        ``power-l2 features + ImageNet class probabilities, C=1 (by out-of-fold log-loss)``
        or ``power-l2 features + 3 intermediate blocks at weight 1, C=10 (...)``."""
        h = self.head_settings
        if h.get("C") is None or "normalize" not in h:
            return ""
        extra = " + ImageNet class probabilities" if h.get("imagenet_classes") else ""
        if h.get("intermediate_blocks"):
            extra += (f" + {len(h['intermediate_blocks'])} intermediate blocks at weight "
                      f"{h['intermediate_weight']:g}")
        return f"{h['normalize']} features{extra}, C={h['C']:g} (by {h.get('chosen_by')})"

    @property
    def changed_features(self) -> bool:
        """True when the backbone is not the pretrained one the training data was checked
        with (fine-tuned, or trained from scratch): its features differ."""
        return bool(self.from_scratch) or bool(self.finetune and
                                               self.finetune.changed_backbone)
