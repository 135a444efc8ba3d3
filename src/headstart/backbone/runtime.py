"""Fast inference engines for a backbone: OpenVINO, ONNX Runtime or PyTorch.

Every engine runs the same graph (:func:`image_features_module`): a uint8 batch ``(N, S, S, 3)``
(the resized, centre-cropped RGB images) -> normalisation -> backbone -> ``(N, D)`` float32
features. Normalising inside the graph keeps the decode threads light and lets the engine
fuse it.

``auto`` picks OpenVINO on a CPU when it is installed, else ONNX Runtime, else PyTorch
(always PyTorch on a GPU). A graph is exported once per backbone identity and cached under
``<cache>/runtimes/``; before its first use it is checked against PyTorch on real images
(cosine similarity of every feature vector > 0.9999). An engine that fails the check, or
fails to export, is recorded and PyTorch is used instead, with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.files import atomic_folder
from .._threads import before_torch, openvino_config, size_torch
from ..backbone.build import Backbone
from ..errors import HeadstartError

__all__ = ["RUNTIMES", "Engine", "checked_ir", "cosine_parity", "image_features_module",
           "installed", "int8_engine", "int8_missing", "make_engine", "openvino_ir_engine"]

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PARITY_MIN_COSINE = 0.9999


def image_features_module(backbone: Backbone) -> Any:
    """The graph every engine runs, as a ``torch.nn.Module`` (see the module docstring)."""
    import torch

    class ImageFeatures(torch.nn.Module):
        """``(N, S, S, 3)`` uint8 -> ``(N, D)`` float32 backbone features."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone.model
            mean = torch.tensor(backbone.preprocess.mean, dtype=torch.float32)
            std = torch.tensor(backbone.preprocess.std, dtype=torch.float32)
            # (x / 255 - mean) / std  ==  x * scale + shift
            self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
            self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
            return self.backbone(x)

    return ImageFeatures().eval()


class Engine:
    """A compiled feature extractor: ``engine(batch_u8) -> (N, D)`` float32.

    ``variant`` is empty for FP32 engines, whose features agree with PyTorch and share one
    feature cache; a quantised engine names its variant (``int8-<calibration hash>``) so its
    features are cached apart. ``ir`` is the OpenVINO IR file behind it, if any.
    """

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray], variant: str = "",
                 ir: Path | None = None) -> None:
        self.name = name
        self.variant = variant
        self.ir = ir
        self._fn = fn

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.ascontiguousarray(batch, dtype=np.uint8)),
                          dtype=np.float32)

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"


def cosine_parity(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two ``(N, D)`` arrays."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).min())


def _torch_engine(backbone: Backbone) -> Engine:
    before_torch()
    import torch

    size_torch()

    module = image_features_module(backbone)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    return Engine("torch" if device == "cpu" else "torch-cuda", run)


def _example(backbone: Backbone, n: int = 2) -> Any:
    import torch

    s = backbone.preprocess.size
    return torch.zeros(n, s, s, 3, dtype=torch.uint8)


def _export_openvino(backbone: Backbone, folder: Path) -> None:
    """Through ONNX: faster than converting the PyTorch module directly (see
    benchmarks/README.md), and the parity check below judges the result either way."""
    import openvino as ov

    _export_onnx(backbone, folder)
    model = ov.convert_model(str(folder / "model.onnx"))
    (folder / "model.onnx").unlink()
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)


def _load_openvino(folder: Path, cache_root: Path, xml: str = "model.xml"
                   ) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    # compiled blobs in the user cache (never beside the IR: that may be a model directory)
    core.set_property({"CACHE_DIR": str(cache_root / "runtimes" / "compiled")})
    # f32: CPUs with bf16 units would otherwise silently compute in bf16
    compiled = core.compile_model(str(folder / xml), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32", **openvino_config()})
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch})[0].copy()
    return run


def _export_onnx(backbone: Backbone, folder: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(image_features_module(backbone), (_example(backbone),),
                          str(folder / "model.onnx"), input_names=["images"],
                          output_names=["features"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "n"}, "features": {0: "n"}})


def _load_onnx(folder: Path, cache_root: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(folder / "model.onnx"), opts,
                                   providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": batch})[0]
    return run


_BACKENDS = {
    "openvino": ("openvino", _export_openvino, _load_openvino),
    "onnxruntime": ("onnxruntime", _export_onnx, _load_onnx),
}


def _cuda_available() -> bool:
    """True when PyTorch sees a GPU; PyTorch is imported only where an NVIDIA driver is."""
    if not Path("/proc/driver/nvidia").exists() and os.name != "nt":
        return False
    import torch

    return torch.cuda.is_available()


def installed(*modules: str) -> bool:
    """Whether every one of ``modules`` can be imported (asked without importing it)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):  # set to None in sys.modules: blocked
        return False


def _compiled(backbone: Backbone, name: str, cache_root: Path, sample: np.ndarray
              ) -> Engine | None:
    """Export (once), check against PyTorch (once) and load engine ``name``; None if unfit."""
    module, export, load = _BACKENDS[name]
    folder = cache_root / "runtimes" / backbone.identity() / name
    check_file = folder / "check.json"
    try:
        if not check_file.is_file():
            with atomic_folder(folder) as tmp:
                export(backbone, tmp)
                cos = cosine_parity(load(tmp, cache_root)(sample),
                                    _torch_engine(backbone)(sample))
                (tmp / "check.json").write_text(json.dumps(
                    {"min_cosine": cos, "ok": cos > PARITY_MIN_COSINE, "images": len(sample)}))
        check = json.loads(check_file.read_text())
        if not check["ok"]:
            warnings.warn(f"{name} features differ from PyTorch (cosine "
                          f"{check['min_cosine']:.6f} <= {PARITY_MIN_COSINE}); using PyTorch",
                          RuntimeWarning, stacklevel=3)
            return None
        return Engine(name, load(folder, cache_root),
                      ir=folder / "model.xml" if name == "openvino" else None)
    except Exception as e:  # noqa: BLE001 - any export or compile failure falls back
        warnings.warn(f"{name} unavailable for {backbone.name} ({type(e).__name__}: {e}); "
                      "using PyTorch", RuntimeWarning, stacklevel=3)
        logger.debug("engine %s failed", name, exc_info=True)
        return None


def make_engine(backbone: Backbone, cache_root: Path, runtime: str = "auto",
                sample: np.ndarray | None = None) -> Engine:
    """The fastest working engine for ``backbone``.

    Args:
        runtime: ``auto``, ``openvino``, ``onnxruntime`` or ``torch``.
        cache_root: where exported graphs are kept (the feature cache root).
        sample: ``(n, S, S, 3)`` uint8 real images for the parity check of a new export.

    Raises:
        HeadstartError: an unknown runtime, or a named one that is not installed.
    """
    if runtime not in RUNTIMES:
        raise HeadstartError(param="runtime", expected=f"one of {', '.join(RUNTIMES)}",
                             got=runtime)
    if runtime == "torch" or (runtime == "auto" and _cuda_available()):
        return _torch_engine(backbone)
    names = [runtime] if runtime != "auto" else [n for n in _BACKENDS if installed(n)]
    for name in names:
        if not installed(_BACKENDS[name][0]):
            raise HeadstartError(f"{name} is not installed (pip install {name})",
                                 param="runtime")
    if backbone.ir is not None and "openvino" in names:  # the graph a model carries
        try:
            return openvino_ir_engine(backbone.ir, "", cache_root)
        except Exception as e:  # noqa: BLE001 - a graph this OpenVINO cannot read: rebuild
            logger.warning("%s cannot be loaded (%s); exporting the backbone again",
                           backbone.ir, e)
    if sample is None:
        s = backbone.preprocess.size
        sample = np.full((1, s, s, 3), 128, np.uint8)
    for name in names:
        engine = _compiled(backbone, name, cache_root, sample)
        if engine is not None:
            return engine
    return _torch_engine(backbone)


def int8_engine(backbone: Backbone, cache_root: Path, calibration: np.ndarray) -> Engine:
    """An OpenVINO engine quantised to INT8 with NNCF post-training quantisation.

    Args:
        calibration: ``(n, S, S, 3)`` uint8 images (the user's own training images; up to
            300 are used). The quantised graph is cached per calibration set.

    Raises:
        HeadstartError: OpenVINO or NNCF is not installed, or the FP32 graph failed.
    """
    import hashlib

    why = int8_missing()
    if why:
        raise HeadstartError(why, param="int8")
    calibration = calibration[:300]
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:12]
    variant = f"int8-{digest}"
    folder = cache_root / "runtimes" / backbone.identity() / variant
    if not (folder / "model.xml").is_file():
        fp32 = make_engine(backbone, cache_root, "openvino", sample=calibration[:8])
        if fp32.ir is None:
            raise HeadstartError("the OpenVINO FP32 graph failed its check; cannot quantise "
                                 "(see the warning above)", param="int8")
        import nncf
        import openvino as ov

        with atomic_folder(folder) as tmp:
            data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = nncf.quantize(ov.Core().read_model(str(fp32.ir)), data,
                                          subset_size=len(calibration))
            ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
    return openvino_ir_engine(folder / "model.xml", variant, cache_root)


def int8_missing() -> str | None:
    """Why INT8 cannot run here (OpenVINO or NNCF not installed), or None."""
    for module in ("openvino", "nncf"):
        if not installed(module):
            return f"needs {module}, which is not installed: pip install 'headstart[int8]'"
    return None


def openvino_ir_engine(xml: Path, variant: str, cache_root: Path) -> Engine:
    """An engine that runs a saved OpenVINO IR file (``.xml`` beside its ``.bin``);
    compiled blobs are kept under ``cache_root``."""
    if not installed("openvino"):
        raise HeadstartError(f"{xml} needs OpenVINO: pip install openvino")
    return Engine("openvino-int8" if variant.startswith("int8") else "openvino",
                  _load_openvino(xml.parent, cache_root, xml.name), variant=variant, ir=xml)


def checked_ir(backbone: Backbone, cache_root: Path) -> Path | None:
    """The OpenVINO FP32 graph of ``backbone`` exported to the cache and checked against
    PyTorch there, if there is one (None otherwise)."""
    folder = cache_root / "runtimes" / backbone.identity() / "openvino"
    try:
        ok = json.loads((folder / "check.json").read_text())["ok"]
    except (OSError, ValueError, KeyError):
        return None
    return folder / "model.xml" if ok and (folder / "model.bin").is_file() else None
