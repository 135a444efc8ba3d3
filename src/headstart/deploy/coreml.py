"""Core ML export, for iPhone, iPad and Mac apps (``.mlpackage``, an ML program).

* input ``image``: an RGB image of ``S x S`` (Vision's ``VNCoreMLRequest`` scales and crops
  camera frames to it; ``imageCropAndScaleOption = .centerCrop`` matches headstart's
  centre crop); the scale ``1/255`` is in the image input, the per-channel normalisation
  inside the model;
* outputs ``classLabel`` (the most likely class) and ``classLabel_probs`` (class ->
  probability: calibrated, after the softmax and the temperature inside the model, never
  logits), and ``unknown_score``: the image is "unknown" when it is above the
  ``unknown_threshold`` in the model's metadata.

Core ML runs only on Apple systems, so the export is checked structurally here (input type
and size, class labels, a probability output produced by a softmax inside the model, the
unknown score output); its numbers were not compared with PyTorch. Converted from
``torch.export`` with ``coremltools`` (``pip install 'headstart[coreml]'``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..backbone.runtime import installed
from ..fit.classifier import Classifier
from ..io.files import load_json
from .graph import (ExportError, ExportFormat, ExportJob, deploy_module, export_metadata,
                    quiet)

__all__ = ["FORMAT", "NOT_CHECKED", "coremltools", "load_spec"]

NOT_CHECKED = ("Core ML cannot run on Linux: the model's structure was checked, its numbers "
               "were not compared with PyTorch here (an ML program computes in float16 on "
               "Apple devices)")
META_PREFIX = "headstart."


def coremltools() -> Any:
    """The ``coremltools`` module, imported without its side effect: importing it raises
    the interpreter's recursion limit to 5000 for the whole process (a module of its
    TensorFlow frontend calls ``sys.setrecursionlimit``), which headstart undoes."""
    limit = sys.getrecursionlimit()
    with quiet():
        import coremltools as ct
    sys.setrecursionlimit(limit)
    return ct


def load_spec(path: Path) -> Any:
    """The protobuf spec of a saved ``.mlpackage``."""
    ct = coremltools()
    with quiet():
        return ct.utils.load_spec(str(path))


def _missing() -> str | None:
    if installed("coremltools"):
        return None
    return "the coreml format needs coremltools: pip install 'headstart[coreml]'"


def _program(clf: Classifier, job: ExportJob) -> Any:
    """The deployed model (images scaled to [0, 1] -> probabilities, unknown score) as an
    exported program, its ``alias`` nodes (which coremltools cannot convert) removed."""
    import torch

    pre = clf.backbone_.preprocess
    inner = deploy_module(clf, reference=job.reference)

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.deployed = inner
            self.register_buffer("mean", torch.tensor(pre.mean).float().view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(pre.std).float().view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probs, score, _ = self.deployed((image - self.mean) / self.std)
            return probs, score

    s = pre.size
    program = torch.export.export(Normalised().eval(), (torch.zeros(1, 3, s, s),))
    program = program.run_decompositions({})
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and "alias" in str(node.target):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def _write(clf: Classifier, path: Path, job: ExportJob) -> None:
    s = clf.backbone_.preprocess.size
    ct = coremltools()
    with quiet():
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        model = ct.convert(
            _program(clf, job), convert_to="mlprogram",
            inputs=[ct.ImageType(name="image", shape=(1, 3, s, s), scale=1.0 / 255.0,
                                 color_layout=ct.colorlayout.RGB)],
            classifier_config=ct.ClassifierConfig(list(clf.classes_)),
            minimum_deployment_target=ct.target.iOS15)
    spec = model.get_spec()
    score = [o.name for o in spec.description.output
             if o.name not in (spec.description.predictedFeatureName,
                               spec.description.predictedProbabilitiesName)][0]
    ct.utils.rename_feature(spec, score, "unknown_score")
    model = ct.models.MLModel(spec, weights_dir=model.weights_dir)
    rows = None if job.reference is None else len(job.reference)
    meta = export_metadata(clf, reference_rows=rows)
    meta["input"] = json.dumps("image: RGB S x S (scale 1/255 in the input; (x - mean) / std "
                               "inside)")
    for key, value in meta.items():
        model.user_defined_metadata[META_PREFIX + key] = value
    model.short_description = f"headstart classifier: {', '.join(clf.classes_)}"
    model.save(str(path))


def _metadata(path: Path) -> dict[str, Any]:
    if not (path / "Manifest.json").is_file():
        raise ExportError(f"{path}: not a Core ML package (no Manifest.json)")
    spec = load_spec(path)
    meta = spec.description.metadata.userDefined
    return {k[len(META_PREFIX):]: load_json(v) for k, v in meta.items()
            if k.startswith(META_PREFIX)}


def _inspect(path: Path, clf: Classifier) -> dict[str, Any]:
    """Check the saved package's structure; raises :class:`ExportError` on a failed check."""
    spec = load_spec(path)
    desc, s = spec.description, clf.backbone_.preprocess.size
    image = desc.input[0].type.imageType
    ops = _operations(spec)
    checks = {
        "image_input": desc.input[0].type.WhichOneof("Type") == "imageType"
        and (image.width, image.height) == (s, s),
        "class_labels": _labels(ops) == list(clf.classes_),
        "probabilities_from_softmax": _from_softmax(ops, desc.predictedProbabilitiesName),
        "unknown_score_output": any(o.name == "unknown_score" for o in desc.output),
        "metadata": _metadata(path).get("classes") == list(clf.classes_)}
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise ExportError(f"the Core ML model failed its structural checks: {', '.join(failed)}")
    return {"structure": checks, "input": f"image RGB {s}x{s}", "ok": True, "note": NOT_CHECKED}


def _operations(spec: Any) -> list[Any]:
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def _labels(ops: list[Any]) -> list[str]:
    for op in ops:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v for item in values for v in item.immediateValue.tensor.strings.values]
    return []


def _from_softmax(ops: list[Any], probs_name: str) -> bool:
    """Whether the probability output is computed from a ``softmax`` op of the program."""
    producer = {o.name: op for op in ops for o in op.outputs}
    todo, seen = [probs_name], set()
    while todo:
        name = todo.pop()
        op = producer.get(name)
        if op is None or name in seen:
            continue
        seen.add(name)
        if op.type == "softmax":
            return True
        if op.type in ("classify", "cast", "identity", "squeeze", "reshape"):
            todo += [a.name for arg in op.inputs.values() for a in arg.arguments if a.name]
    return False


FORMAT = ExportFormat(
    "coreml", ".mlpackage", "Core ML .mlpackage (iPhone, iPad, Mac); checked structurally "
    "(Core ML cannot run on Linux)", _write, None, _metadata, folder=True, compact=True,
    missing=_missing, inspect=_inspect, takes_job=True)
