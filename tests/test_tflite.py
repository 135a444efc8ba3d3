"""TFLite export: uint8 NHWC pixels in, probabilities and the unknown score out, the same
answers as the model in PyTorch (FP32) or nearly (INT8), class names inside and beside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.backbone.features import prepare_image
from headstart.deploy.export import export, read_metadata
from headstart.deploy.graph import compact_reference

from .conftest import assert_user_error

pytestmark = pytest.mark.slow  # every test converts a model


def _run_tflite(path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and list(detail["shape"]) == [1, *pixels.shape[1:]]
    runner = interpreter.get_signature_runner()
    outs = [runner(images=p[None]) for p in pixels]
    return (np.concatenate([o["probabilities"] for o in outs]),
            np.concatenate([np.reshape(o["unknown_score"], -1) for o in outs]))


@pytest.fixture(scope="module")
def fp32_files(deploy_models, tmp_path_factory) -> dict[str, Path]:
    """Each model's FP32 .tflite (exported once, checked on its 50 images)."""
    out = {}
    for name, (_, model_dir, images) in deploy_models.items():
        folder = tmp_path_factory.mktemp(f"tflite-{name}")
        r = export(model_dir, "tflite", folder, samples=images)
        assert r["parity"]["ok"] and r["parity"]["images"] == 50
        out[name] = folder / "model.tflite"
    return out


@pytest.mark.parametrize("name", ["hymenoptera", "steel"])
def test_fp32_tflite_gives_the_models_answers_on_50_images(deploy_models, fp32_files, name):
    clf, model_dir, images = deploy_models[name]
    assert bool(clf.backbone_.taps) == (name == "steel")  # the far set reads inner blocks
    path = fp32_files[name]
    labels = path.with_suffix(".labels.txt").read_text().splitlines()
    meta = read_metadata(path)
    assert labels == meta["classes"] == clf.classes_
    # a user of the file alone: the same pixels the library decodes, through the file
    pixels = np.stack([prepare_image(f, clf.backbone_.preprocess) for f in images])
    probs, score = _run_tflite(path, pixels)
    pred = clf.predict_images(images)
    assert float(np.abs(probs - pred.proba).max()) <= 1e-4
    unknown = score > meta["unknown_threshold"]
    assert unknown.tolist() == pred.rejected.tolist()
    label = np.where(unknown, "unknown", np.asarray(clf.classes_)[probs.argmax(1)])
    assert label.tolist() == pred.labels


def test_int8_tflite_is_smaller_and_agrees(deploy_models, fp32_files, tmp_path):
    clf, model_dir, images = deploy_models["hymenoptera"]
    fp32 = fp32_files["hymenoptera"]
    int8 = export(model_dir, "tflite", tmp_path / "int8", samples=images, quantize="int8")
    assert int8["bytes"] < (fp32.stat().st_size + 100) / 2.5
    assert read_metadata(tmp_path / "int8" / "model.tflite")["quantize"] == "int8"
    pixels = np.stack([prepare_image(f, clf.backbone_.preprocess) for f in images])
    p32, _ = _run_tflite(fp32, pixels)
    p8, _ = _run_tflite(tmp_path / "int8" / "model.tflite", pixels)
    truth = np.array([clf.classes_.index(f.parent.name) for f in images])
    agree = float((p8.argmax(1) == p32.argmax(1)).mean())
    acc32, acc8 = float((p32.argmax(1) == truth).mean()), float((p8.argmax(1) == truth).mean())
    print(f"int8 agreement {agree:.3f}, accuracy fp32 {acc32:.3f} int8 {acc8:.3f}")
    assert agree >= 0.98 and abs(acc8 - acc32) <= 0.01 + 1e-9


def test_compact_reference_keeps_real_rows_that_cover_the_set():
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1200, 64)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    clf = SimpleNamespace(ood_=SimpleNamespace(reference_=ref))
    small = compact_reference(clf, rows=300)  # type: ignore[arg-type]
    assert small.shape == (300, 64)
    rows = {r.tobytes() for r in ref}
    assert all(r.tobytes() in rows for r in small)  # real rows, none invented
    assert compact_reference(clf, rows=2000) is ref  # type: ignore[arg-type]
    # farthest-point: every left-out row has a kept row closer than a random 300 would give
    def worst(kept):
        return float((1 - (ref @ kept.T).max(axis=1)).max())
    assert worst(small) < worst(ref[rng.choice(1200, 300, replace=False)])


def test_without_the_extra_the_format_says_which_to_install(deploy_models, tmp_path):
    _, model_dir, _ = deploy_models["hymenoptera"]
    code = ("import sys; sys.modules['litert_torch'] = None; from headstart.cli.main import "
            f"main; sys.argv = ['headstart', 'export', {str(model_dir)!r}, '--format', "
            f"'tflite', '--out', {str(tmp_path)!r}]; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_user_error(r, "pip install 'headstart[tflite]'")
    assert list(tmp_path.iterdir()) == []
    r = subprocess.run([sys.executable, "-m", "headstart", "formats", "--json"],
                       capture_output=True, text=True)
    names = [f["name"] for f in json.loads(r.stdout)]
    assert {"onnx", "openvino", "tflite", "coreml", "web"} <= set(names)
