"""Export to ONNX and OpenVINO: one graph from normalised images to calibrated
probabilities and the unknown score, metadata in the file, parity with PyTorch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from headstart.deploy.export import ExportError, export, read_metadata
from headstart.backbone.features import preprocess_image

from .conftest import EXAMPLES, invoke_cli

pytestmark = pytest.mark.slow  # every test exports a trained model
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
    assert "parity" in r.stdout and "labels identical on all" in r.stdout


def test_failed_parity_fails_loudly_and_writes_nothing(trained, tmp_path):
    _, model_dir = trained
    with pytest.raises(ExportError, match="parity check failed.*nothing written"):
        export(model_dir, "onnx", tmp_path / "m.onnx", samples=SAMPLES, max_diff=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_is_a_clear_error(trained, tmp_path):
    _, model_dir = trained
    r = invoke_cli("export", model_dir, "--format", "tfjs")
    assert r.returncode == 2
    assert r.stderr.startswith("error: --format: expected one of onnx, openvino")


def test_mlp_head_exports_with_parity(tmp_path):
    from headstart import Classifier

    clf = Classifier(head="mlp").fit(EXAMPLES / "train")
    r = export(clf, "openvino", tmp_path / "mlp.xml", samples=SAMPLES)
    assert r["parity"]["ok"] and r["parity"]["labels_identical"]
    assert (tmp_path / "mlp.xml").is_file() and (tmp_path / "mlp.bin").is_file()


def test_a_head_with_the_imagenet_classes_exports_with_parity(tmp_path):
    """Few ants and bees (near ImageNet) keep the ImageNet block and a plain backbone; ONNX
    and OpenVINO carry it. A few-shot digits model (far) never tries it: its backbone is
    tapped at intermediate blocks instead, and it too saves, loads and exports with
    parity."""
    from headstart import Classifier

    from .conftest import copy_digits, shared

    data = tmp_path / "hym"
    for c in ("ants", "bees"):
        (data / c).mkdir(parents=True)
        for f in sorted(shared("hymenoptera", "train", c).iterdir())[:6]:
            shutil.copy(f, data / c / f.name)
    clf = Classifier().fit(data)
    assert clf.summary_.head_settings["imagenet_classes"] is True and clf.backbone_.taps == ()
    model_dir = clf.save(tmp_path / "m")
    val = sorted(shared("hymenoptera", "val", "ants").iterdir())[:8]
    loaded = Classifier.load(model_dir)
    np.testing.assert_array_equal(loaded.predict_images(val).proba, clf.predict_images(val).proba)
    for fmt, out in (("onnx", tmp_path / "m.onnx"), ("openvino", tmp_path / "ov")):
        p = export(model_dir, fmt, out, samples=val)["parity"]
        assert p["ok"] and p["labels_identical"] and p["max_abs_diff"] < 1e-4, fmt
    far = Classifier().fit(copy_digits(tmp_path / "digits", train=8, val=4))
    assert far.summary_.domain_gap.level == "far"
    assert far.summary_.head_settings["imagenet_classes"] is False
    assert far.backbone_.taps == (4, 5, 6) and far.head_.blocks == (1008, 1728, 2880)
    far_dir = far.save(tmp_path / "far")
    spec = json.loads((far_dir / "headstart.json").read_text())["backbone"]
    assert spec["taps"] == [4, 5, 6] and spec["tap_grid"] == 3 and spec["num_features"] == 6896
    digits = sorted((tmp_path / "digits" / "val" / "7").iterdir())
    again = Classifier.load(far_dir)
    np.testing.assert_allclose(again.predict_images(digits).proba,
                               far.predict_images(digits).proba, atol=1e-6)
    for fmt, out in (("onnx", tmp_path / "far.onnx"), ("openvino", tmp_path / "far_ov")):
        p = export(far_dir, fmt, out, samples=digits)["parity"]
        assert p["ok"] and p["labels_identical"] and p["max_abs_diff"] < 1e-4, fmt
