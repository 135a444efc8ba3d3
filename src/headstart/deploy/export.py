"""Exporting a trained model, checked against PyTorch before anything is written.

The formats are one registry, :data:`EXPORT_FORMATS` (``onnx``, ``openvino`` here;
``tflite`` in :mod:`.tflite`, ``coreml`` in :mod:`.coreml`, ``web`` in :mod:`.web`; plugins
add more under the entry-point group ``headstart.exports``): an :class:`ExportFormat` names
its files, writes them, runs them for the parity check and reads their metadata. The CLI's
``--format``, the studio's export buttons and downloads and the model folder's list of
files all read it. Phone and web formats take their input as uint8 pixels and keep a
compact unknown detector (:func:`~.graph.compact_reference`); the report says how its
decisions compare with the full one's.

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
label (class or unknown) is the same (a quantised export: if 90% of the labels agree; Core
ML, which cannot run here: if its structure checks pass).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..backbone.build import Preprocess
from ..backbone.features import normalize, prepare_image
from ..fit.classifier import Classifier
from ..errors import HeadstartError
from ..io.dataset import find_images, load_dataset
from ..io.files import check_output, load_json
from ..registry import Registry
from . import coreml, tflite, web
from .graph import (META_KEYS, Answers, ExportError, ExportFormat, ExportJob, compact_reference,
                    deploy_module, export_metadata, write_onnx)

__all__ = ["EXPORT_FORMATS", "PARITY_MAX_DIFF", "ExportError", "ExportFormat", "deploy_module",
           "export", "export_metadata", "read_metadata"]

logger = logging.getLogger(__name__)

PARITY_MAX_DIFF = 1e-4
SAMPLES = 16  # training images used when no samples are given
MAX_SAMPLES = 64
QUANTISED_MIN_AGREEMENT = 0.9  # an INT8 / FP16 export: the share of labels that must agree
CALIBRATION_IMAGES = 200  # training images used to calibrate post-training quantisation


def _check(entry: object) -> None:
    if not isinstance(entry, ExportFormat):
        raise TypeError(f"an export format is a headstart ExportFormat, got {entry!r}")


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format", "headstart.exports",
                                                  name_of=lambda f: f.name, check=_check)


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
    import torch

    s = clf.backbone_.preprocess.size
    write_onnx(deploy_module(clf), torch.zeros(2, 3, s, s), path, export_metadata(clf),
               doc=f"headstart classifier: {', '.join(clf.classes_)}")


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
for _module in (tflite, coreml, web):
    EXPORT_FORMATS.register(_module.FORMAT)


def _training_files(clf: Classifier) -> list[Path]:
    """The model's training images, where their folder (or CSV) still exists."""
    s = clf.summary_
    data = Path(str(s.data_path or s.data or ""))
    if str(data) and data.is_file() and data.suffix.lower() == ".csv":
        try:
            return list(load_dataset(data).train.paths)
        except HeadstartError:
            return []
    if not str(data) or not data.is_dir():
        return []
    return find_images([data])[0]


def _prepared(files: Sequence[Any], pre: Preprocess) -> list[np.ndarray]:
    arrays = []
    for f in files:
        try:
            arrays.append(prepare_image(f, pre))
        except Exception:  # noqa: BLE001 - an unreadable sample is just not used
            continue
    return arrays


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
        found = _training_files(clf)
        files = found[::max(1, len(found) // SAMPLES)][:SAMPLES]
        s = clf.summary_
        where = f"training images in {s.data_path or s.data}" if found else where
    arrays = _prepared(files, pre)
    if not arrays:  # smooth random colour fields: not photos, but cover the input range
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (SAMPLES, 8, 8, 3), dtype=np.uint8)
        arrays = [np.asarray(Image.fromarray(a).resize((pre.size, pre.size)), np.uint8)
                  for a in small]
        where = "synthetic images (no sample images found; pass samples=IMAGES)"
    return np.stack(arrays), where


def _calibration(clf: Classifier, samples: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 images to calibrate quantisation: up to 200 training images,
    else the samples."""
    found = _training_files(clf)
    arrays = _prepared(found[::max(1, len(found) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES],
                       clf.backbone_.preprocess)
    return np.stack(arrays) if arrays else samples


def _features(clf: Classifier, images: np.ndarray) -> np.ndarray:
    """``(N, D)`` FP32 PyTorch backbone features of ``(N, S, S, 3)`` uint8 images."""
    import torch

    x = normalize(images, clf.backbone_.preprocess)
    model = clf.backbone_.model.eval().float().cpu()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _answers(clf: Classifier, feats: np.ndarray, reference: np.ndarray | None) -> Answers:
    """The model's answers for ``(N, D)`` features, the unknown score against ``reference``
    rows (None: the model's own)."""
    from ..fit.calibration import softmax

    probs = softmax(clf.head_.decision_function(feats), clf.temperature_)
    ood = clf.ood_
    if ood is None:
        return probs, np.zeros(len(feats), np.float32), np.zeros(len(feats), bool)
    if reference is not None:
        ood = copy.copy(ood)
        ood.reference_ = reference
        ood.k_ = min(ood.k_, len(reference))
    score = ood.score(feats)
    return probs, score, score > ood.threshold_


def export(model: str | os.PathLike | Classifier, fmt: str = "onnx",
           out: str | os.PathLike | None = None,
           samples: Sequence[str | os.PathLike] | None = None,
           model_dir: str | os.PathLike | None = None,
           max_diff: float = PARITY_MAX_DIFF, quantize: str | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``model`` (a model directory or a fitted :class:`Classifier`) and check it.

    Args:
        fmt: a registered format (:data:`EXPORT_FORMATS`: ``onnx``, one ``.onnx`` file;
            ``openvino``, ``.xml`` + ``.bin``; ``tflite``; ``coreml``, an ``.mlpackage``;
            ``web``, a folder with an offline page; and any a plugin adds).
        out: the file (or folder) to write; default ``<model dir>/model<suffix>``.
        samples: images (files or folders) for the parity check (at most 64 are used);
            default 16 of the training images when their folder still exists, else
            synthetic images.
        model_dir: where an in-memory ``model`` was saved (the default ``out`` folder).
        max_diff: the largest probability difference from PyTorch that passes.
        quantize: ``int8`` or ``fp16`` where the format offers it (``tflite``: int8,
            calibrated on up to 200 training images; ``web``: fp16 weights); a quantised
            export passes when at least 90% of the sample labels agree.
        progress: ``progress(stage)`` at each stage (reading the sample images,
            converting, checking), for a progress display.

    Returns:
        ``path``, ``format``, ``bytes``, ``metadata``, ``parity`` (``images``,
        ``source``, ``max_abs_diff``, ``labels_identical``, ``ok``; or ``numeric: False``
        and what the structural check saw, for a format that cannot run here) and
        ``unknown_reference`` (for compact formats: rows kept and the agreement of the
        compact unknown decisions with the full detector's on the samples).

    Raises:
        ExportError: unknown format, a missing extra, a failed export, or a check that
            does not hold (nothing is written then).
    """
    form = EXPORT_FORMATS.get(fmt, param="fmt", error=ExportError)
    why = form.unavailable()
    if why:
        raise ExportError(why)
    if quantize is not None and quantize not in form.quantize:
        offers = " or ".join(form.quantize) if form.quantize else "no quantisation"
        raise ExportError(f"{fmt} offers {offers}, not {quantize}")
    if isinstance(model, Classifier):
        clf, folder = model, Path(model_dir) if model_dir else None
    else:
        clf, folder = Classifier.load(model), Path(model)
    out = _target(form, out, folder)
    if clf.int8:
        logger.warning("this model runs an INT8 backbone; the export uses the FP32 backbone, "
                       "whose probabilities differ slightly from the INT8 model's")
    report = _write_checked(form, clf, out, samples, max_diff, quantize,
                            progress or (lambda stage: None))
    size = sum(_size(f) for f in form.files(out))
    logger.info("exported %s (%s): %s", out, fmt, report["parity"])
    return {"path": str(out), "format": fmt, "bytes": size, "quantize": quantize,
            "metadata": form.read_metadata(out), **report}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _write_checked(form: ExportFormat, clf: Classifier, out: Path,
                   samples: Sequence[str | os.PathLike] | None, max_diff: float,
                   quantize: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Write ``form`` into a temporary folder beside ``out``, check it, then move it into
    place (companions first, the main file last); nothing is left behind on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for f in form.files(out):
        check_output(f, "out", folder=form.folder)  # never a FIFO, a device, a stray folder
    if form.folder and out.is_dir() and any(out.iterdir()):
        try:
            form.read_metadata(out)
        except Exception:  # noqa: BLE001 - whatever is there is not ours to replace
            raise ExportError(f"{out} is a folder that holds something other than a headstart "
                              f"{form.name} export; choose another --out", param="out") from None
    say("reading sample images")
    images, where = _samples(clf, samples)
    feats = _features(clf, images)
    reference = compact_reference(clf) if form.compact else None
    job = ExportJob(quantize, reference,
                    _calibration(clf, images) if quantize == "int8" else ExportJob().calibration)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
    try:
        written = tmp / out.name
        say(f"converting to {form.name}")
        try:
            form.write(clf, written, job) if form.takes_job else form.write(clf, written)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - any exporter failure is reported plainly
            raise ExportError(f"export to {form.name} failed: {type(e).__name__}: {e}") from None
        say(f"checking on {len(images)} images" if form.run else "checking its structure")
        if form.run is None:
            parity = {"numeric": False, **(form.inspect(written, clf) if form.inspect else {})}
        else:
            parity = _parity(form, clf, written, images, where, feats, reference, max_diff,
                             quantize, out)
        for f, dst in zip(form.files(written), form.files(out)):
            _replace(f, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"parity": parity, "unknown_reference": _compact_report(clf, feats, reference)}


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; a folder replaces an earlier export's folder whole."""
    if src.is_dir() and dst.is_dir():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _compact_report(clf: Classifier, feats: np.ndarray, reference: np.ndarray | None
                    ) -> dict[str, Any] | None:
    """How a compact unknown detector's decisions compare with the full one's."""
    if reference is None or clf.ood_ is None:
        return None
    full = _answers(clf, feats, None)[2]
    compact = _answers(clf, feats, reference)[2]
    return {"rows": int(len(reference)), "of": int(len(clf.ood_.reference_)),
            "images": int(len(feats)), "same_decisions": int((full == compact).sum()),
            "agreement": float((full == compact).mean()) if len(feats) else 1.0}


def _target(form: ExportFormat, out: str | os.PathLike | None, folder: Path | None) -> Path:
    """The main file to write: ``out`` with the format's suffix (a folder without a suffix
    gets the default name inside it), or the default name in the model's folder."""
    if out is None:
        if folder is None:
            raise ExportError("give the file to write when exporting an in-memory model",
                              param="out")
        return folder / form.default_name()
    out = Path(out)
    if out.suffix != form.suffix:
        out = out / form.default_name() if out.suffix == "" else out.with_suffix(form.suffix)
    return out


def _parity(form: ExportFormat, clf: Classifier, written: Path, images: np.ndarray,
            where: str, feats: np.ndarray, reference: np.ndarray | None, max_diff: float,
            quantize: str | None, out: Path) -> dict[str, Any]:
    """The exported file's answers against PyTorch's on the sample images (with the same
    unknown-detector rows as the export).

    Raises:
        ExportError: FP32: they differ by ``max_diff`` or more, or a label differs;
            quantised: fewer than 90% of the labels agree.
    """
    assert form.run is not None
    p, s, u = form.run(written, images, clf.backbone_.preprocess)
    rp, rs, ru = _answers(clf, feats, reference)
    diff = float(np.abs(p - rp).max())
    same = (p.argmax(1) == rp.argmax(1)) & (u.astype(bool) == ru)
    parity = {"images": len(images), "source": where, "max_abs_diff": diff,
              "max_abs_diff_unknown_score": float(np.abs(s - rs).max()),
              "labels_identical": bool(same.all()), "label_agreement": float(same.mean())}
    if quantize is None:
        parity["ok"] = diff < max_diff and bool(same.all())
        limit = f"max probability difference {diff:.2e} (limit {max_diff:.0e})"
    else:
        parity["ok"] = float(same.mean()) >= QUANTISED_MIN_AGREEMENT
        limit = f"{quantize}: max probability difference {diff:.2e}"
    if not parity["ok"]:
        raise ExportError(
            f"parity check failed on {len(images)} {where}: {limit}, labels identical on "
            f"{int(same.sum())} of {len(same)}; nothing written to {out}")
    return parity
