"""What every export format builds on: the format record, the whole model as one
``torch.nn.Module``, the metadata each export carries, and the compact unknown detector
for phones and web pages.

A format is an :class:`ExportFormat` (registered in :data:`headstart.deploy.export.
EXPORT_FORMATS`); :func:`headstart.deploy.export.export` writes it into a temporary place,
checks it against the FP32 PyTorch model and only then moves it where it belongs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import __version__
from ..backbone.build import Preprocess
from ..errors import HeadstartError
from ..fit.classifier import Classifier
from ..io.bundle import EXPORT_STEM

__all__ = ["COMPACT_REFERENCE_ROWS", "Answers", "ExportError", "ExportFormat", "ExportJob",
           "compact_reference", "deploy_module", "export_metadata", "quiet",
           "write_onnx"]

Answers = tuple[np.ndarray, np.ndarray, np.ndarray]  # probabilities, unknown score, unknown
COMPACT_REFERENCE_ROWS = 500  # the unknown detector's rows kept in phone and web exports
META_KEYS = ("classes", "preprocess", "temperature", "unknown_threshold", "backbone",
             "headstart_version", "val_accuracy", "input", "outputs")
NCHW_INPUT = ("images: (N, 3, S, S) float32, RGB, resize shorter side to S / crop_pct, "
              "centre crop S, x / 255, (x - mean) / std")
PIXELS_INPUT = ("images: (N, S, S, 3) uint8 RGB, resize shorter side to S / crop_pct, centre "
                "crop S (x / 255, (x - mean) / std happen inside)")


class ExportError(HeadstartError):
    """The export failed, or the exported file disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportJob:
    """What a format's ``write`` is asked to build beyond the model itself.

    Attributes:
        quantize: ``None`` (FP32), or one of the format's :attr:`ExportFormat.quantize`.
        reference: ``(R, D)`` unit rows for the unknown detector (a compact set for
            phones and web pages), or None for the model's own.
        calibration: ``(N, S, S, 3)`` uint8 training images for post-training
            quantisation (empty when not quantising).
    """

    quantize: str | None = None
    reference: np.ndarray | None = None
    calibration: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8))


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Args:
        name: the registry key (``--format NAME``).
        suffix: the main file's suffix (the default output is ``MODEL/model<suffix>``;
            for a folder format the folder's).
        help: one line for the CLI and the studio.
        write: ``write(clf, path)`` writes the main file ``path`` (and its companions);
            formats with ``takes_job`` get ``write(clf, path, job)`` (an
            :class:`ExportJob`).
        run: ``run(path, images, preprocess)`` answers for ``images`` ``(N, S, S, 3)``
            uint8 (decoded, resized and cropped as ``preprocess`` says): probabilities
            ``(N, K)``, unknown scores ``(N,)`` and unknown flags ``(N,)``. None for a
            format that cannot run here (then ``inspect`` checks its structure).
        read_metadata: ``read_metadata(path)``: the headstart metadata in the file.
        companions: suffixes of the other files written beside the main one (``.bin``).
        folder: the export is a folder (``path`` names it) rather than files.
        quantize: the quantisations it offers (``int8``, ``fp16``).
        compact: keep a compact unknown detector (:func:`compact_reference`).
        missing: ``missing()``: why the format cannot be written here (an extra not
            installed), or None; asked before any work starts.
        inspect: ``inspect(path, clf)``: a structural check for a format that cannot run
            here; returns what it checked, raises on a failed check.
        takes_job: ``write`` takes the :class:`ExportJob`.
    """

    name: str
    suffix: str
    help: str
    write: Callable[..., None]
    run: Callable[[Path, np.ndarray, Preprocess], Answers] | None
    read_metadata: Callable[[Path], dict[str, Any]]
    companions: tuple[str, ...] = ()
    folder: bool = False
    quantize: tuple[str, ...] = ()
    compact: bool = False
    missing: Callable[[], str | None] | None = None
    inspect: Callable[[Path, Classifier], dict[str, Any]] | None = None
    takes_job: bool = False

    def files(self, main: Path) -> list[Path]:
        """The main file (or folder) and its companions, companions first."""
        return [main.with_suffix(s) for s in (*self.companions, self.suffix)]

    def default_name(self) -> str:
        return EXPORT_STEM + self.suffix

    def unavailable(self) -> str | None:
        """Why this format cannot be written here, or None."""
        return self.missing() if self.missing is not None else None


def deploy_module(clf: Classifier, pixels: bool = False,
                  reference: np.ndarray | None = None,
                  topk: Callable[[Any, int], Any] | None = None) -> Any:
    """The whole model as one ``torch.nn.Module``: images -> answers.

    Args:
        pixels: the input is ``(N, S, S, 3)`` uint8 RGB (resized and cropped), normalised
            inside; else ``(N, 3, S, S)`` float32 already normalised.
        reference: ``(R, D)`` unit rows for the unknown score instead of the model's own.
        topk: ``topk(x, k)`` -> the ``k`` largest values per row (for runtimes whose
            converter wants its own op); default ``torch.topk``.

    Returns:
        a module whose ``forward(images)`` gives probabilities ``(N, K)`` (calibrated),
        the unknown score ``(N,)`` and the unknown flag ``(N,)`` (bool).
    """
    import torch

    ood = clf.ood_
    pre = clf.backbone_.preprocess
    if reference is None:
        reference = ood.reference_ if ood is not None else np.zeros((1, clf.backbone_.num_features))

    class Deployed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = clf.backbone_.model
            self.head = clf.head_.to_torch()
            self.register_buffer("inv_temperature", torch.tensor(1.0 / clf.temperature_))
            self.register_buffer("reference", torch.from_numpy(np.asarray(reference, np.float32)))
            if pixels:
                self.register_buffer("mean", torch.tensor(pre.mean).float().view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(pre.std).float().view(1, 3, 1, 1))
            self.k = min(int(ood.k_), len(reference)) if ood is not None else 1
            self.threshold = float(ood.threshold_) if ood is not None else float("inf")

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if pixels:
                x = images.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
                images = (x - self.mean) / self.std
            f = self.backbone(images)
            probs = torch.softmax(self.head(f) * self.inv_temperature, dim=1)
            unit = f / (f.norm(dim=1, keepdim=True) + 1e-12)
            sims = unit @ self.reference.T
            top = topk(sims, self.k) if topk is not None else torch.topk(sims, self.k, dim=1).values
            score = 1.0 - top.mean(dim=1)
            return probs, score, score > self.threshold

    return Deployed().eval()


OUTPUTS = ("probabilities", "unknown_score", "unknown")


def write_onnx(module: Any, sample: Any, path: Path, meta: dict[str, str], doc: str = "",
               edit: Callable[[Any], None] | None = None) -> None:
    """Export ``module`` (images -> :data:`OUTPUTS`, as :func:`deploy_module` builds it) to
    the ONNX file ``path``, traced on ``sample`` with a dynamic batch: input ``images``,
    ``meta`` as its ``metadata_props``, ``doc`` as its doc string; ``edit(model)`` may
    change the graph before it is saved."""
    import warnings

    import onnx
    import torch

    with warnings.catch_warnings(), quiet():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), str(path), input_names=["images"],
                          output_names=list(OUTPUTS), opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "n"} for n in ("images", *OUTPUTS)})
    model = onnx.load(str(path))
    if edit is not None:
        edit(model)
    model.producer_name, model.producer_version = "headstart", __version__
    if doc:
        model.doc_string = doc
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def compact_reference(clf: Classifier, rows: int = COMPACT_REFERENCE_ROWS) -> np.ndarray | None:
    """At most ``rows`` of the unknown detector's reference rows ``(R, D)``, chosen to cover
    the training images (greedy farthest-point in cosine distance, seeded at the row most
    like the others); None when the model has no unknown detector.

    The unknown score of an image is one minus its mean similarity to the ``k`` nearest
    rows, so dropping rows can only raise it: the export reports how its unknown decisions
    compare with the full detector's.
    """
    ood = clf.ood_
    if ood is None:
        return None
    ref = np.asarray(ood.reference_, np.float32)
    if len(ref) <= rows:
        return ref
    sims = ref @ ref.T
    chosen = [int(np.argmax(sims.mean(axis=1)))]
    nearest = sims[chosen[0]].copy()  # similarity of each row to its nearest chosen row
    for _ in range(rows - 1):
        nxt = int(np.argmin(nearest))
        chosen.append(nxt)
        np.maximum(nearest, sims[nxt], out=nearest)
    return ref[np.sort(chosen)]


def export_metadata(clf: Classifier, pixels: bool = False,
                    reference_rows: int | None = None) -> dict[str, str]:
    """What every export records about the model, each value as JSON: classes,
    preprocessing, temperature, the unknown threshold, backbone, version, validation
    accuracy, input and outputs (``pixels``: the input is uint8 pixels, normalised inside;
    ``reference_rows``: how many unknown-detector rows a compact export kept)."""
    ood = clf.ood_
    values = {
        "classes": clf.classes_, "preprocess": clf.backbone_.preprocess.to_dict(),
        "temperature": float(clf.temperature_),
        "unknown_threshold": float(ood.threshold_) if ood is not None else None,
        "backbone": clf.backbone_.name, "headstart_version": __version__,
        "val_accuracy": clf.summary_.val_accuracy,
        "input": PIXELS_INPUT if pixels else NCHW_INPUT,
        "outputs": "probabilities (N, K) calibrated, columns = classes; unknown_score (N,); "
                   "unknown (N,) bool"}
    meta = {k: json.dumps(values[k]) for k in META_KEYS}
    if reference_rows is not None and ood is not None:
        meta["unknown_reference_rows"] = json.dumps(
            {"kept": int(reference_rows), "of": int(len(ood.reference_))})
    return meta


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what converters print on the process's stdout and stderr (file descriptors
    1 and 2, where C++ code writes too): the CLI owns stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
