"""A fitted classifier's state and its model directory, both ways.

:func:`write_model` turns a :class:`Fitted` record into the files of a model directory
(through :func:`headstart.io.bundle.write_bundle`: signature, digests, atomic swap);
:func:`read_model` reads one back into a :class:`Fitted`, every file checked against its
digest and every array against the metadata. The directory carries the backbone's
parity-checked OpenVINO graph (``backbone.fp32.xml/.bin``), so a model predicts anywhere
without re-exporting or importing PyTorch; and the backbone weights are copied from a file
when one exists, so saving needs no PyTorch either.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.files import resolve_cache_dir
from ..backbone.build import Backbone, backbone_from_file
from ..io.bundle import expect_shapes, read_arrays, read_meta, verified_digest, write_bundle
from ..fit.calibration import OutOfDistribution
from ..errors import ModelError
from ..fit.finetune import write_metrics_csv
from ..heads import head_from_state
from ..backbone.runtime import Engine, checked_ir, openvino_ir_engine
from ..fit.summary import TrainingSummary

__all__ = ["FP32_XML", "HASHES_FILE", "INT8_XML", "Fitted", "read_model", "write_model"]

logger = logging.getLogger(__name__)

INT8_XML = "backbone.int8.xml"
FP32_XML = "backbone.fp32.xml"  # the backbone's OpenVINO graph, checked against PyTorch
HASHES_FILE = "hashes.safetensors"  # content hashes of the training images (leakage checks)


@dataclass
class Fitted:
    """What a model directory holds: classes, backbone, head, temperature, unknown
    detector (None for old models without one), training record, the training images'
    content hashes, the per-epoch history, and the INT8 engine if the model has one."""

    classes: list[str]
    backbone: Backbone
    head: Any
    temperature: float
    ood: OutOfDistribution | None
    summary: TrainingSummary
    train_digests: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    int8: Engine | None = None


def _bin(xml: str) -> str:
    return xml[: -len(".xml")] + ".bin"


def write_model(path: str | os.PathLike, f: Fitted, fp32_ir: Path | None,
                extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``f`` as a model directory at ``path`` (see :func:`headstart.io.bundle.
    write_bundle`); ``fp32_ir``: the backbone's checked OpenVINO graph to carry, if any.

    Raises:
        ModelError: ``path`` may not be replaced, or the write failed.
    """
    weights = f.backbone.weights_file()  # no PyTorch when the file exists
    ir = None if f.int8 is not None else fp32_ir
    meta = {"classes": f.classes, "backbone": f.backbone.spec(),
            "head": {"kind": f.head.kind}, "summary": f.summary.to_dict(),
            "int8": f.int8.variant if f.int8 else None, "temperature": float(f.temperature),
            "ood": f.ood.config() if f.ood is not None else None}
    arrays = {"head.safetensors": f.head.state()}
    if weights is None:
        arrays["backbone.safetensors"] = {k: v.detach().cpu().numpy() for k, v in
                                          f.backbone.model.state_dict().items()}
    if f.ood is not None:
        arrays["ood.safetensors"] = f.ood.state()
    if f.train_digests:
        arrays[HASHES_FILE] = {"train": np.frombuffer(
            bytes.fromhex("".join(f.train_digests)), np.uint8).reshape(-1, 16)}

    def add_files(tmp: Path) -> None:
        write_metrics_csv(f.history, tmp / "metrics.csv")
        if weights is not None:
            shutil.copyfile(weights, tmp / "backbone.safetensors")
        for graph, name in ((f.int8.ir if f.int8 else None, INT8_XML), (ir, FP32_XML)):
            if graph is not None:  # the engine travels with the model
                shutil.copyfile(graph, tmp / name)
                shutil.copyfile(graph.with_suffix(".bin"), tmp / _bin(name))
        if extra is not None:
            extra(tmp)
    out = write_bundle(path, meta, arrays, add_files)
    if weights is None:
        f.backbone.keep_weights(out / "backbone.safetensors")
    return out


def fp32_ir(backbone: Backbone, engine: Engine | None,
            cache_dir: str | os.PathLike | None) -> Path | None:
    """The parity-checked OpenVINO graph of ``backbone``: the ``engine``'s, the one it was
    loaded with, or the one in the cache (None if there is none)."""
    if engine is not None and engine.name == "openvino" and engine.ir is not None:
        return engine.ir
    return backbone.ir or checked_ir(backbone, resolve_cache_dir(cache_dir))


def read_model(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
               ) -> Fitted:
    """The :class:`Fitted` state in a model directory.

    Raises:
        ModelError: missing directory or files, not a headstart model, a changed or
            corrupt file, or metadata that does not fit the arrays (the message names the
            field).
    """
    d = Path(path)
    meta = read_meta(d)
    if meta.get("files") is None:
        logger.warning("%s was saved by a headstart that recorded no file digests: its "
                       "files are loaded unverified (save it again to add them)", d)
    spec = meta["backbone"]
    classes, n_features = list(meta["classes"]), int(spec["num_features"])
    kind = meta["head"]["kind"]
    hstate = read_arrays(d, "head.safetensors", meta)
    digest, verified = verified_digest(d, "backbone.safetensors", meta)
    try:
        head = head_from_state(kind, hstate, len(classes), n_features)
    except ModelError as e:
        raise ModelError(f"{d}: {e} (headstart.json: {len(classes)} classes, "
                         f"{n_features} backbone features)") from None
    ood = _read_ood(d, meta, n_features)
    hashes = read_arrays(d, HASHES_FILE, meta, required=False)
    if hashes is not None:
        expect_shapes(f"{d}: {HASHES_FILE}", hashes, {"train": (-1, 16)})
    backbone = backbone_from_file(spec, d / "backbone.safetensors", digest, verified)
    if (d / FP32_XML).is_file():  # its engine: predict needs no export, no PyTorch
        for name in (FP32_XML, _bin(FP32_XML)):
            verified_digest(d, name, meta)
        backbone.ir = d / FP32_XML
    int8 = None
    if meta.get("int8"):
        for name in (INT8_XML, _bin(INT8_XML)):
            verified_digest(d, name, meta)
        int8 = openvino_ir_engine(d / INT8_XML, meta["int8"], resolve_cache_dir(cache_dir))
    return Fitted(classes, backbone, head, float(meta.get("temperature", 1.0)), ood,
                  TrainingSummary.from_dict(meta.get("summary")),
                  [r.tobytes().hex() for r in hashes["train"]] if hashes else [], [], int8)


def _read_ood(d: Path, meta: dict[str, Any], n_features: int) -> OutOfDistribution | None:
    """The saved unknown detector (None for a model saved without one)."""
    ood = read_arrays(d, "ood.safetensors", meta, required=False)
    if meta.get("ood") and ood is not None:
        try:
            return OutOfDistribution.from_state(meta["ood"], ood, n_features)
        except ModelError as e:
            raise ModelError(f"{d}: {e}") from None
    return None
