"""Exporting a trained model, checked against PyTorch before anything is written.

The formats are one registry, :data:`EXPORT_FORMATS` (``onnx``, ``openvino``; plugins add
more under the entry-point group ``headstart.exports``): an :class:`ExportFormat` names its
files, writes them, runs them for the parity check and reads their metadata. The CLI's
``--format``, the studio's export buttons and downloads and the model folder's list of
files all read it.

The ONNX and OpenVINO graphs go from the *normalised* image tensor to the answers:

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

from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..backbone.build import Preprocess
from ..backbone.features import normalize, prepare_image
from ..errors import HeadstartError
from ..fit.classifier import Classifier
from ..io.bundle import EXPORT_STEM
from ..io.dataset import find_images
from ..io.files import check_output, load_json
from ..registry import Registry

__all__ = ["EXPORT_FORMATS", "PARITY_MAX_DIFF", "ExportError", "ExportFormat", "deploy_module",
           "export", "export_metadata", "read_metadata"]

logger = logging.getLogger(__name__)

PARITY_MAX_DIFF = 1e-4
SAMPLES = 16  # training images used when no samples are given
MAX_SAMPLES = 64
META_KEYS = ("classes", "preprocess", "temperature", "unknown_threshold", "backbone",
             "headstart_version", "val_accuracy", "input", "outputs")


class ExportError(HeadstartError):
    """The export failed, or the exported file disagrees with PyTorch."""


Answers = tuple[np.ndarray, np.ndarray, np.ndarray]  # probabilities, unknown score, unknown


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Args:
        name: the registry key (``--format NAME``).
        suffix: the main file's suffix (the default output is ``MODEL/model<suffix>``).
        help: one line for the CLI and the studio.
        write: ``write(clf, path)`` writes the main file ``path`` (and its companions).
        run: ``run(path, images, preprocess)`` answers for ``images`` ``(N, S, S, 3)``
            uint8 (decoded, resized and cropped as ``preprocess`` says): probabilities
            ``(N, K)``, unknown scores ``(N,)`` and unknown flags ``(N,)``.
        read_metadata: ``read_metadata(path)``: the headstart metadata in the file.
        companions: suffixes of the other files written beside the main one (``.bin``).
    """

    name: str
    suffix: str
    help: str
    write: Callable[[Classifier, Path], None]
    run: Callable[[Path, np.ndarray, Preprocess], Answers]
    read_metadata: Callable[[Path], dict[str, Any]]
    companions: tuple[str, ...] = ()

    def files(self, main: Path) -> list[Path]:
        """The main file and its companions."""
        return [main.with_suffix(s) for s in (*self.companions, self.suffix)]

    def default_name(self) -> str:
        return EXPORT_STEM + self.suffix


def _check(entry: object) -> None:
    if not isinstance(entry, ExportFormat):
        raise TypeError(f"an export format is a headstart ExportFormat, got {entry!r}")


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "headstart.exports",
                                                  name_of=lambda f: f.name, check=_check)


def deploy_module(clf: Classifier) -> Any:
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


def export_metadata(clf: Classifier) -> dict[str, str]:
    """What every export records about the model, each value as JSON: classes,
    preprocessing, temperature, the unknown threshold, backbone, version, validation
    accuracy, input and outputs."""
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
    """The headstart metadata of an exported file (its format known by its suffix).

    Raises:
        ExportError: no installed export format writes files with that suffix.
    """
    path = Path(path)
    for fmt in EXPORT_FORMATS:
        if path.suffix == fmt.suffix:
            return fmt.read_metadata(path)
    raise ExportError(f"{path}: no installed export format writes {path.suffix or 'such'} "
                      "files")


def _onnx_metadata(path: Path) -> dict[str, Any]:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
             .metadata_props}
    return {k: load_json(v) for k, v in props.items()}


def _openvino_metadata(path: Path) -> dict[str, Any]:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return {k: load_json(model.get_rt_info(["headstart", k]).astype(str))
            for k in META_KEYS if model.has_rt_info(["headstart", k])}


def _write_onnx(clf: Classifier, path: Path) -> None:
    import onnx
    import torch

    s = clf.backbone_.preprocess.size
    module = deploy_module(clf)
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
    for key, value in export_metadata(clf).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _write_openvino(clf: Classifier, path: Path) -> None:
    import openvino as ov

    onnx_file = path.with_suffix(".onnx")
    _write_onnx(clf, onnx_file)
    model = ov.convert_model(str(onnx_file))
    onnx_file.unlink()
    for key, value in export_metadata(clf).items():
        model.set_rt_info(value, ["headstart", key])
    ov.save_model(model, str(path), compress_to_fp16=False)


def _run_onnx(path: Path, images: np.ndarray, pre: Preprocess) -> Answers:
    """Run an ONNX file with ONNX Runtime if installed, else with OpenVINO."""
    try:
        import onnxruntime as ort
    except ImportError:
        return _run_openvino(path, images, pre)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p, s, u = session.run(None, {"images": normalize(images, pre)})
    return p, s, u


def _run_openvino(path: Path, images: np.ndarray, pre: Preprocess) -> Answers:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({0: normalize(images, pre)})
    return tuple(np.asarray(out[compiled.output(i)]) for i in range(3))  # type: ignore


EXPORT_FORMATS.register(ExportFormat(
    "onnx", ".onnx", "one .onnx file (ONNX Runtime, OpenVINO, TensorRT...)", _write_onnx,
    _run_onnx, _onnx_metadata))
EXPORT_FORMATS.register(ExportFormat(
    "openvino", ".xml", "OpenVINO IR, .xml + .bin (Intel CPUs, GPUs, NPUs)", _write_openvino,
    _run_openvino, _openvino_metadata, companions=(".bin",)))


def _samples(clf: Classifier, samples: Sequence[str | os.PathLike] | None
             ) -> tuple[np.ndarray, str]:
    """``(N, S, S, 3)`` uint8 sample images, prepared for the model, and where they came
    from."""
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
    return np.stack(arrays), where


def _reference(clf: Classifier, images: np.ndarray) -> Answers:
    """The model's own answers for ``(N, S, S, 3)`` uint8 images with the backbone in
    PyTorch (float32, CPU)."""
    import torch

    from ..fit.calibration import softmax

    x = normalize(images, clf.backbone_.preprocess)
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
        fmt: a registered format (:data:`EXPORT_FORMATS`: ``onnx``, one ``.onnx`` file;
            ``openvino``, ``.xml`` + ``.bin``; and any a plugin adds).
        out: the file to write; default ``<model dir>/model<suffix>``.
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
    form = EXPORT_FORMATS.get(fmt, param="fmt", error=ExportError)
    if isinstance(model, Classifier):
        clf, folder = model, Path(model_dir) if model_dir else None
    else:
        clf, folder = Classifier.load(model), Path(model)
    out = _target(form, out, folder)
    if clf.int8:
        logger.warning("this model runs an INT8 backbone; the export uses the FP32 backbone, "
                       "whose probabilities differ slightly from the INT8 model's")
    out.parent.mkdir(parents=True, exist_ok=True)
    for f in form.files(out):
        check_output(f, "out")  # never a FIFO, a device, a folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
    try:
        written = tmp / out.name
        try:
            form.write(clf, written)
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported plainly
            raise ExportError(f"export to {fmt} failed: {type(e).__name__}: {e}") from None
        parity = _parity(form, clf, written, samples, max_diff, out)
        for f in form.files(written):  # companions first, the main file last
            os.replace(f, out.with_suffix(f.suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in form.files(out))
    logger.info("exported %s (%s): parity max diff %.2e", out, fmt, parity["max_abs_diff"])
    return {"path": str(out), "format": fmt, "bytes": size,
            "metadata": form.read_metadata(out), "parity": parity}


def _target(form: ExportFormat, out: str | os.PathLike | None, folder: Path | None) -> Path:
    """The main file to write: ``out`` with the format's suffix (a folder gets the default
    name), or the default name in the model's folder."""
    if out is None:
        if folder is None:
            raise ExportError("give the file to write when exporting an in-memory model",
                              param="out")
        return folder / form.default_name()
    out = Path(out)
    if out.suffix != form.suffix:
        out = out / form.default_name() if out.suffix == "" else out.with_suffix(form.suffix)
    return out


def _parity(form: ExportFormat, clf: Classifier, written: Path,
            samples: Sequence[str | os.PathLike] | None, max_diff: float, out: Path
            ) -> dict[str, Any]:
    """The exported file's answers against PyTorch's on sample images.

    Raises:
        ExportError: they differ by ``max_diff`` or more, or a label differs.
    """
    images, where = _samples(clf, samples)
    p, s, u = form.run(written, images, clf.backbone_.preprocess)
    rp, rs, ru = _reference(clf, images)
    diff = float(np.abs(p - rp).max())
    same = bool((p.argmax(1) == rp.argmax(1)).all() and (u.astype(bool) == ru).all())
    parity = {"images": len(images), "source": where, "max_abs_diff": diff,
              "max_abs_diff_unknown_score": float(np.abs(s - rs).max()),
              "labels_identical": same, "ok": diff < max_diff and same}
    if not parity["ok"]:
        raise ExportError(
            f"parity check failed on {len(images)} {where}: max probability difference "
            f"{diff:.2e} (limit {max_diff:.0e}), labels identical: {same}; "
            f"nothing written to {out}")
    return parity
