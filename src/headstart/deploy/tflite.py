"""TensorFlow Lite (LiteRT) export, for Android, iOS, Raspberry Pi and microcontrollers.

One ``.tflite`` file with a fixed-size input in the layout Android's image-classification
examples use, and the preprocessing inside:

* input ``images``: ``(1, S, S, 3)`` uint8 RGB, the image resized (shorter side to
  ``S / crop_pct``) and centre-cropped to ``S x S``; scaling and normalisation happen
  inside the file;
* output ``probabilities``: ``(1, K)`` calibrated class probabilities, columns in the
  order of the classes; output ``unknown_score``: ``(1,)``, the image is "unknown" when it
  is above ``unknown_threshold``.

The class names are in ``model.labels.txt`` beside the file (one per line, in column
order) and, with everything :func:`~headstart.deploy.graph.export_metadata` records, in
the file's own metadata (entry ``headstart``, JSON). ``int8`` quantises the backbone
(weights and activations, calibrated on the training images) and keeps the head and the
unknown score in float. Converted with ``litert-torch``, run for the parity check with
``ai-edge-litert`` (``pip install 'headstart[tflite]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._threads import cores
from ..backbone.runtime import installed
from ..backbone.build import Preprocess
from ..fit.classifier import Classifier
from ..io.files import load_json
from .graph import (Answers, ExportError, ExportFormat, ExportJob, deploy_module,
                    export_metadata, quiet)

__all__ = ["FORMAT"]

METADATA_NAME = "headstart"
EXTRA = "pip install 'headstart[tflite]'"


def _missing() -> str | None:
    if installed("litert_torch", "ai_edge_litert"):
        return None
    return f"the tflite format needs litert-torch and ai-edge-litert: {EXTRA}"


def _module(clf: Classifier, reference: np.ndarray | None) -> Any:
    """The deployed model with named outputs: uint8 pixels -> probabilities, unknown
    score (the flag is the threshold in the metadata; TFLite wants no bool output)."""
    import litert_torch  # noqa: F401 - registers torch.ops.tfl
    import torch

    inner = deploy_module(clf, pixels=True, reference=reference,
                          topk=lambda x, k: torch.ops.tfl.topk_v2(x, k)[0])

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deployed = inner

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            probs, score, _ = self.deployed(images)
            return {"probabilities": probs, "unknown_score": score}

    return Named().eval()


def _write(clf: Classifier, path: Path, job: ExportJob) -> None:
    s = clf.backbone_.preprocess.size
    with quiet():
        import litert_torch
        import torch

        edge = litert_torch.signature(
            "serving_default", _module(clf, job.reference),
            sample_kwargs={"images": torch.zeros(1, s, s, 3, dtype=torch.uint8)}).convert()
        edge.export(str(path))
    meta = export_metadata(clf, pixels=True,
                           reference_rows=None if job.reference is None else len(job.reference))
    meta["quantize"] = json.dumps(job.quantize)
    _add_metadata(path, {k: json.loads(v) for k, v in meta.items()})
    if job.quantize == "int8":  # after the metadata: the quantiser keeps it
        with quiet():
            _quantize_int8(path, job.calibration)
    path.with_suffix(".labels.txt").write_text("".join(c + "\n" for c in clf.classes_),
                                               encoding="utf-8")


def _quantize_int8(path: Path, calibration: np.ndarray) -> None:
    """Post-training INT8 quantisation of the backbone's operations (weights per channel,
    activations calibrated on ``calibration`` ``(N, S, S, 3)`` uint8 images)."""
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(path))
    # the backbone's operations carry its module path; the head and the unknown score stay
    # in float, where a few numbers decide the answer
    q.add_static_config(".*_backbone/.*", "*", 8, 8)
    result = q.calibrate({"serving_default": [{"images": im[None]} for im in calibration]},
                         num_threads=cores())
    q.quantize(result).export_model(str(path), overwrite=True)


def _add_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Add the ``headstart`` metadata entry (JSON) to the flatbuffer at ``path``."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(path.stat().st_size + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def _metadata(path: Path) -> dict[str, Any]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            return load_json(bytes(raw).decode())
    raise ExportError(f"{path}: no headstart metadata in this .tflite file")


def _run(path: Path, images: np.ndarray, pre: Preprocess) -> Answers:
    """Run the ``.tflite`` file one image at a time (its input size is fixed)."""
    from ai_edge_litert.interpreter import Interpreter

    threshold = _metadata(path).get("unknown_threshold")
    with quiet():
        runner = Interpreter(str(path), num_threads=cores()).get_signature_runner()
        outs = [runner(images=im[None]) for im in images]
    probs = np.concatenate([o["probabilities"] for o in outs])
    score = np.concatenate([np.reshape(o["unknown_score"], -1) for o in outs])
    limit = float("inf") if threshold is None else float(threshold)
    return probs, score, score > limit


FORMAT = ExportFormat(
    "tflite", ".tflite", "TensorFlow Lite / LiteRT, .tflite + labels (Android, iOS, "
    "Raspberry Pi); --int8 for a 3x smaller file", _write, _run, _metadata,
    companions=(".labels.txt",), quantize=("int8",), compact=True, missing=_missing,
    takes_job=True)
