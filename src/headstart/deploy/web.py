"""Web export: a folder holding an offline page that classifies dropped or chosen images and
the webcam live, in the browser (ONNX Runtime Web on WebAssembly).

The folder (default ``MODEL/model.web/``) holds:

* ``index.html``: the page. It works from a double click (``file://``, where browsers
  block ``fetch`` and module imports) and from any static web server: everything it needs
  arrives through classic ``<script>`` tags, nothing from the network;
* ``model.onnx``: the model, input ``images`` ``(N, S, S, 3)`` uint8 RGB (resized and
  centre-cropped; normalised inside), outputs ``probabilities``, ``unknown_score`` and
  ``unknown`` (with the metadata every headstart export carries);
* ``model.js``: the same model and the page's settings as a script (for ``file://``);
* ``labels.json``: the class names and the page's settings (preprocessing, unknown
  threshold, "not sure" level) for other tools;
* ``ort/``: the ONNX Runtime Web files the headstart package ships (MIT licence).

``fp16`` stores the weights as float16 (half the download); they are widened to float32
when the page loads, so the arithmetic stays float32.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..backbone.build import Preprocess
from ..defaults import NOT_SURE_BELOW
from ..fit.classifier import Classifier
from ..io.files import load_json
from .graph import (Answers, ExportError, ExportFormat, ExportJob, deploy_module,
                    export_metadata, write_onnx)

__all__ = ["FORMAT", "page_config"]

ASSETS = "webassets"
FP16_MIN_ELEMENTS = 1024  # smaller tensors stay float32 (biases, scales: a few bytes each)


def _assets() -> Any:
    return resources.files("headstart.deploy").joinpath(ASSETS)


def page_config(clf: Classifier, meta: dict[str, str]) -> dict[str, Any]:
    """What the page needs to know: classes, preprocessing, unknown threshold, "not sure"
    level, backbone, validation accuracy."""
    values = {k: json.loads(v) for k, v in meta.items()}
    return {**values, "not_sure_below": NOT_SURE_BELOW, "format": "headstart-web"}


def _write_onnx(clf: Classifier, path: Path, job: ExportJob, meta: dict[str, str]) -> None:
    import torch

    s = clf.backbone_.preprocess.size
    write_onnx(deploy_module(clf, pixels=True, reference=job.reference),
               torch.zeros(1, s, s, 3, dtype=torch.uint8), path, meta,
               edit=_fp16_weights if job.quantize == "fp16" else None)


def _fp16_weights(model: Any) -> None:
    """Store the large float32 weights as float16, each widened back by a ``Cast``."""
    import onnx
    from onnx import numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < FP16_MIN_ELEMENTS:
            continue
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       f"{name}.fp16")
        init.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [f"{name}.fp16"], [name],
                                           to=onnx.TensorProto.FLOAT))
    for node in reversed(casts):
        model.graph.node.insert(0, node)


def _write(clf: Classifier, folder: Path, job: ExportJob) -> None:
    folder.mkdir()
    meta = export_metadata(clf, pixels=True,
                           reference_rows=None if job.reference is None else len(job.reference))
    meta["quantize"] = json.dumps(job.quantize)
    model_file = folder / "model.onnx"
    _write_onnx(clf, model_file, job, meta)
    config = page_config(clf, meta)
    (folder / "labels.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    script = (f"window.HEADSTART_MODEL = {{config: {json.dumps(config)}, onnx: \""
              f"{base64.b64encode(model_file.read_bytes()).decode()}\"}};\n")
    (folder / "model.js").write_text(script, encoding="utf-8")
    _copy_page(folder)


def _copy_page(folder: Path) -> None:
    """``index.html`` and ``ort/`` (the runtime, its WebAssembly inlined into a script)."""
    assets = _assets()
    (folder / "index.html").write_bytes(assets.joinpath("index.html").read_bytes())
    ort = folder / "ort"
    ort.mkdir()
    for name in ("ort.wasm.min.js", "LICENSE-onnxruntime-web.txt"):
        (ort / name).write_bytes(assets.joinpath(name).read_bytes())
    glue = assets.joinpath("ort-wasm-simd-threaded.mjs").read_text(encoding="utf-8")
    wasm = base64.b64encode(assets.joinpath("ort-wasm-simd-threaded.wasm.gz").read_bytes())
    (ort / "ort-wasm.js").write_text(
        f"window.HEADSTART_ORT = {{glue: {json.dumps(glue)}, wasm_gz: \"{wasm.decode()}\"}};\n",
        encoding="utf-8")


def _metadata(folder: Path) -> dict[str, Any]:
    import onnx

    model_file = folder / "model.onnx"
    if not (folder / "index.html").is_file() or not model_file.is_file():
        raise ExportError(f"{folder}: not a headstart web export (no index.html and model.onnx)")
    props = {p.key: p.value for p in onnx.load(str(model_file), load_external_data=False)
             .metadata_props}
    return {k: load_json(v) for k, v in props.items()}


def _run(folder: Path, images: np.ndarray, pre: Preprocess) -> Answers:
    """Run ``model.onnx`` with ONNX Runtime (the engine the page runs, compiled for the CPU
    instead of WebAssembly)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    p, s, u = session.run(None, {"images": np.ascontiguousarray(images, np.uint8)})
    return p, s, u


def _missing() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "the web format checks its model with onnxruntime: pip install 'headstart[onnx]'"
    return None


FORMAT = ExportFormat(
    "web", ".web", "an offline web page (folder): drop images or use the webcam, in any "
    "browser, from a double click; --fp16 for half the download", _write, _run, _metadata,
    folder=True, quantize=("fp16",), compact=True, missing=_missing, takes_job=True)
