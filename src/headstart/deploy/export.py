"""Exporting a trained model to ONNX or OpenVINO IR, checked against PyTorch.

The exported graph goes from the *normalised* image tensor to the answers:

* input ``images``: ``(N, 3, S, S)`` float32, each image decoded as RGB, its shorter side
  resized to ``S / crop_pct`` (``interpolation``), centre-cropped to ``S x S``, scaled to
  [0, 1], then ``(x - mean) / std`` per channel;
* output ``probabilities``: ``(N, K)`` calibrated class probabilities (temperature
  scaling included), columns in the order of ``classes``;
* output ``unknown_score``: ``(N,)`` one minus the mean cosine similarity to the 5 nearest
  training images; output ``unknown``: ``(N,)`` bool, ``unknown_score > threshold``.

The file's metadata (ONNX ``metadata_props``; OpenVINO ``rt_info`` under ``headstart``)
records ``classes``, ``preprocess`` (size, crop_pct, interpolation, mean, std),
``temperature``, ``unknown_threshold``, ``backbone`` and the headstart version, each as
JSON. After exporting, the file is run on sample images and compared with the model in
PyTorch; it is kept only if the largest probability difference is below 1e-4 and every
label (class or unknown) is the same.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..io.files import check_output, load_json
from ..io.dataset import find_images
from ..errors import HeadstartError
from ..backbone.features import normalize, prepare_image
from ..fit.classifier import Classifier

__all__ = ["FORMATS", "PARITY_MAX_DIFF", "ExportError", "export", "read_metadata"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
PARITY_MAX_DIFF = 1e-4
SAMPLES = 16  # training images used when no samples are given
MAX_SAMPLES = 64
META_KEYS = ("classes", "preprocess", "temperature", "unknown_threshold", "backbone",
             "headstart_version", "val_accuracy", "input", "outputs")


class ExportError(HeadstartError):
    """The export failed, or the exported file disagrees with PyTorch."""


def _deploy_module(clf: Classifier) -> Any:
    """The whole model as one ``torch.nn.Module``: normalised images -> answers."""
    import torch

    ood = clf.ood_

    class Deployed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = clf.backbone_.model
            self.head = clf.head_.to_torch()
            self.register_buffer("inv_temperature", torch.tensor(1.0 / clf.temperature_))
            ref = ood.reference_ if ood is not None else np.zeros((1, clf.backbone_.num_features))
            self.register_buffer("reference", torch.from_numpy(np.asarray(ref, np.float32)))
            self.k = int(ood.k_) if ood is not None else 1
            self.threshold = float(ood.threshold_) if ood is not None else float("inf")

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            f = self.backbone(images)
            probs = torch.softmax(self.head(f) * self.inv_temperature, dim=1)
            unit = f / (f.norm(dim=1, keepdim=True) + 1e-12)
            top = torch.topk(unit @ self.reference.T, self.k, dim=1).values
            score = 1.0 - top.mean(dim=1)
            return probs, score, score > self.threshold

    return Deployed().eval()


def _metadata(clf: Classifier) -> dict[str, str]:
    ood = clf.ood_
    values = {
        "classes": clf.classes_, "preprocess": clf.backbone_.preprocess.to_dict(),
        "temperature": float(clf.temperature_),
        "unknown_threshold": float(ood.threshold_) if ood is not None else None,
        "backbone": clf.backbone_.name, "headstart_version": __version__,
        "val_accuracy": clf.summary_.val_accuracy,
        "input": "images: (N, 3, S, S) float32, RGB, resize shorter side to S / crop_pct, "
                 "centre crop S, x / 255, (x - mean) / std",
        "outputs": "probabilities (N, K) calibrated, columns = classes; unknown_score (N,); "
                   "unknown (N,) bool"}
    return {k: json.dumps(values[k]) for k in META_KEYS}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The headstart metadata of an exported ``.onnx`` or OpenVINO ``.xml`` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
    else:
        import openvino as ov

        model = ov.Core().read_model(str(path))
        props = {k: model.get_rt_info(["headstart", k]).astype(str)
                 for k in META_KEYS if model.has_rt_info(["headstart", k])}
    return {k: load_json(v) for k, v in props.items()}


def _write_onnx(clf: Classifier, path: Path) -> None:
    import onnx
    import torch

    s = clf.backbone_.preprocess.size
    module = _deploy_module(clf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, 3, s, s),), str(path),
                          input_names=["images"],
                          output_names=["probabilities", "unknown_score", "unknown"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "n"} for n in ("images", "probabilities",
                                                              "unknown_score", "unknown")})
    model = onnx.load(str(path))
    model.producer_name, model.producer_version = "headstart", __version__
    model.doc_string = f"headstart classifier: {', '.join(clf.classes_)}"
    for key, value in _metadata(clf).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _write_openvino(clf: Classifier, path: Path) -> None:
    import openvino as ov

    onnx_file = path.with_suffix(".onnx")
    _write_onnx(clf, onnx_file)
    model = ov.convert_model(str(onnx_file))
    onnx_file.unlink()
    for key, value in _metadata(clf).items():
        model.set_rt_info(value, ["headstart", key])
    ov.save_model(model, str(path), compress_to_fp16=False)


def _run_exported(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run an exported file: ONNX with ONNX Runtime if installed, else both with OpenVINO."""
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            p, s, u = session.run(None, {"images": x})
            return p, s, u
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({0: x})
    return tuple(np.asarray(out[compiled.output(i)]) for i in range(3))  # type: ignore


def _samples(clf: Classifier, samples: Sequence[str | os.PathLike] | None
             ) -> tuple[np.ndarray, str]:
    """``(N, 3, S, S)`` normalised sample images and where they came from."""
    pre = clf.backbone_.preprocess
    where = "given images"
    files: list[Any] = []
    if samples:
        files, _ = find_images(samples)
        files = files[::max(1, len(files) // MAX_SAMPLES)][:MAX_SAMPLES]
    else:
        s = clf.summary_
        data = Path(str(s.data_path or s.data or ""))
        if str(data) and data.is_dir():
            found, _ = find_images([data])
            step = max(1, len(found) // SAMPLES)
            files, where = found[::step][:SAMPLES], f"training images in {data}"
    arrays = []
    for f in files:
        try:
            arrays.append(prepare_image(f, pre))
        except Exception:  # noqa: BLE001 - an unreadable sample is just not used
            continue
    if not arrays:  # smooth random colour fields: not photos, but cover the input range
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (SAMPLES, 8, 8, 3), dtype=np.uint8)
        arrays = [np.asarray(Image.fromarray(a).resize((pre.size, pre.size)), np.uint8)
                  for a in small]
        where = "synthetic images (no sample images found; pass samples=IMAGES)"
    return normalize(np.stack(arrays), pre), where


def _reference(clf: Classifier, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's own answers with the backbone in PyTorch (float32, CPU)."""
    import torch

    from ..fit.calibration import softmax

    model = clf.backbone_.model.eval().float().cpu()
    with torch.inference_mode():
        feats = model(torch.from_numpy(x)).numpy()
    probs = softmax(clf.head_.decision_function(feats), clf.temperature_)
    ood = clf.ood_
    score = ood.score(feats) if ood is not None else np.zeros(len(x), np.float32)
    unknown = score > ood.threshold_ if ood is not None else np.zeros(len(x), bool)
    return probs, score, unknown


def export(model: str | os.PathLike | Classifier, fmt: str = "onnx",
           out: str | os.PathLike | None = None,
           samples: Sequence[str | os.PathLike] | None = None,
           model_dir: str | os.PathLike | None = None,
           max_diff: float = PARITY_MAX_DIFF) -> dict[str, Any]:
    """Export ``model`` (a model directory or a fitted :class:`Classifier`) and check it.

    Args:
        fmt: ``onnx`` (one ``.onnx`` file) or ``openvino`` (``.xml`` + ``.bin``).
        out: the file to write; default ``<model dir>/model.onnx`` or ``model.xml``.
        samples: images (files or folders) for the parity check (at most 64 are used);
            default 16 of the training images when their folder still exists, else
            synthetic images.
        model_dir: where an in-memory ``model`` was saved (the default ``out`` folder).
        max_diff: the largest probability difference from PyTorch that passes.

    Returns:
        ``path``, ``format``, ``bytes``, ``metadata`` and ``parity`` (``images``,
        ``source``, ``max_abs_diff``, ``labels_identical``, ``ok``).

    Raises:
        ExportError: unknown format, a failed export, or a parity check that does not hold
            (nothing is written then).
    """
    if fmt not in FORMATS:
        raise ExportError(f"fmt: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(model, Classifier):
        clf, folder = model, Path(model_dir) if model_dir else None
    else:
        clf, folder = Classifier.load(model), Path(model)
    if out is None:
        if folder is None:
            raise ExportError("out: give the file to write when exporting an in-memory model")
        out = folder / ("model.onnx" if fmt == "onnx" else "model.xml")
    out = Path(out)
    if fmt == "openvino" and out.suffix != ".xml":
        out = out / "model.xml" if out.suffix == "" else out.with_suffix(".xml")
    if fmt == "onnx" and out.suffix != ".onnx":
        out = out / "model.onnx" if out.suffix == "" else out.with_suffix(".onnx")
    if clf.int8:
        logger.warning("this model runs an INT8 backbone; the export uses the FP32 backbone, "
                       "whose probabilities differ slightly from the INT8 model's")
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".onnx",) if fmt == "onnx" else (".xml", ".bin"):
        check_output(out.with_suffix(suffix), "out")  # never a FIFO, a device, a folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
    try:
        written = tmp / out.name
        try:
            (_write_onnx if fmt == "onnx" else _write_openvino)(clf, written)
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported plainly
            raise ExportError(f"export to {fmt} failed: {type(e).__name__}: {e}") from None
        x, where = _samples(clf, samples)
        p, s, u = _run_exported(written, x)
        rp, rs, ru = _reference(clf, x)
        diff = float(np.abs(p - rp).max())
        same = bool((p.argmax(1) == rp.argmax(1)).all() and (u.astype(bool) == ru).all())
        parity = {"images": len(x), "source": where, "max_abs_diff": diff,
                  "max_abs_diff_unknown_score": float(np.abs(s - rs).max()),
                  "labels_identical": same, "ok": diff < max_diff and same}
        if not parity["ok"]:
            raise ExportError(
                f"parity check failed on {len(x)} {where}: max probability difference "
                f"{diff:.2e} (limit {max_diff:.0e}), labels identical: {same}; "
                f"nothing written to {out}")
        files = sorted(tmp.iterdir(), key=lambda f: f.suffix == ".xml")  # .bin before .xml
        for f in files:
            os.replace(f, out.with_suffix(f.suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(out.with_suffix(f).stat().st_size
               for f in ((".onnx",) if fmt == "onnx" else (".xml", ".bin")))
    logger.info("exported %s (%s): parity max diff %.2e", out, fmt, diff)
    return {"path": str(out), "format": fmt, "bytes": size, "metadata": read_metadata(out),
            "parity": parity}
