"""Export to ONNX and OpenVINO: one graph from normalised images to calibrated
probabilities and the unknown score, metadata in the file, parity with PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from headstart.export import ExportError, export, read_metadata
from headstart.features import preprocess_image

from .conftest import EXAMPLES

SAMPLES = [EXAMPLES / "test"]


def test_onnx_graph_gives_the_models_answers(trained, tmp_path):
    import onnxruntime as ort

    clf, model_dir = trained
    r = export(model_dir, "onnx", tmp_path / "m.onnx", samples=SAMPLES)
    p = r["parity"]
    assert p["ok"] and p["labels_identical"] and p["max_abs_diff"] < 1e-4
    assert p["images"] == 30 and p["source"] == "given images"
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["classes"] == clf.classes_
    assert meta["preprocess"] == json.loads(json.dumps(clf.backbone_.preprocess.to_dict()))
    assert meta["temperature"] == pytest.approx(clf.temperature_)
    assert meta["unknown_threshold"] == pytest.approx(clf.ood_.threshold_)
    # a user of the file alone: preprocess as the metadata says, run, read the outputs
    files = sorted((EXAMPLES / "test" / "giraffe").iterdir())[:3]
    x = np.stack([preprocess_image(f, clf.backbone_.preprocess) for f in files])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "unknown_score",
                                                       "unknown"]
    probs, score, unknown = session.run(None, {"images": x})
    pred = clf.predict_images(files)
    np.testing.assert_allclose(probs, pred.proba, atol=1e-4)
    np.testing.assert_allclose(score, pred.ood_score, atol=1e-4)
    assert unknown.tolist() == pred.rejected.tolist()


def test_openvino_export_through_the_cli(trained, tmp_path):
    _, model_dir = trained
    r = subprocess.run([sys.executable, "-m", "headstart", "export", str(model_dir),
                        "--format", "openvino", "--out", str(tmp_path / "ov"), "--samples",
                        str(EXAMPLES / "test"), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["path"] == str(tmp_path / "ov" / "model.xml")
    assert (tmp_path / "ov" / "model.bin").stat().st_size > 10_000_000
    assert out["parity"]["ok"] and out["parity"]["max_abs_diff"] < 1e-4
    assert read_metadata(tmp_path / "ov" / "model.xml")["classes"] == ["elephant", "giraffe"]
    r = subprocess.run([sys.executable, "-m", "headstart", "export", str(model_dir),
                        "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "parity" in r.stdout and "labels identical: True" in r.stdout


def test_failed_parity_fails_loudly_and_writes_nothing(trained, tmp_path):
    _, model_dir = trained
    with pytest.raises(ExportError, match="parity check failed.*nothing written"):
        export(model_dir, "onnx", tmp_path / "m.onnx", samples=SAMPLES, max_diff=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_is_a_clear_error(trained, tmp_path):
    _, model_dir = trained
    r = subprocess.run([sys.executable, "-m", "headstart", "export", str(model_dir),
                        "--format", "tflite"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: --format: expected one of onnx, openvino")


def test_mlp_head_exports_with_parity(tmp_path):
    from headstart import Classifier

    clf = Classifier(head="mlp").fit(EXAMPLES / "train")
    r = export(clf, "openvino", tmp_path / "mlp.xml", samples=SAMPLES)
    assert r["parity"]["ok"] and r["parity"]["labels_identical"]
    assert (tmp_path / "mlp.xml").is_file() and (tmp_path / "mlp.bin").is_file()
