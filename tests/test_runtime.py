from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from headstart.errors import HeadstartError
from headstart.backbone.features import extract_features, prepare_image
from headstart.backbone.runtime import PARITY_MIN_COSINE, cosine_parity, make_engine

from .conftest import EXAMPLES


@pytest.fixture(scope="module")
def batch(backbone):
    files = sorted((EXAMPLES / "test").rglob("*.jpg"))[::5]
    return np.stack([prepare_image(f, backbone.preprocess) for f in files])


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
@pytest.mark.slow
def test_engines_match_pytorch_on_real_images(name, backbone, batch, tmp_path):
    reference = make_engine(backbone, tmp_path, "torch")(batch)
    engine = make_engine(backbone, tmp_path, name, sample=batch[:4])
    assert engine.name == name
    assert cosine_parity(engine(batch), reference) > PARITY_MIN_COSINE
    check = json.loads((tmp_path / "runtimes" / backbone.identity() / name / "check.json")
                       .read_text())
    assert check["ok"] and check["images"] == 4
    # second time: the cached export is loaded, not rebuilt
    again = make_engine(backbone, tmp_path, name)
    np.testing.assert_allclose(again(batch[:2]), engine(batch[:2]), atol=1e-5)


@pytest.mark.slow
def test_auto_prefers_openvino_on_cpu(backbone, tmp_path, batch):
    assert make_engine(backbone, tmp_path, "auto", sample=batch[:2]).name == "openvino"


@pytest.mark.slow
def test_failed_parity_check_falls_back_to_pytorch(backbone, tmp_path, batch):
    make_engine(backbone, tmp_path, "openvino", sample=batch[:2])
    check = tmp_path / "runtimes" / backbone.identity() / "openvino" / "check.json"
    check.write_text(json.dumps({"min_cosine": 0.98, "ok": False, "images": 2}))
    with pytest.warns(RuntimeWarning, match="differ from PyTorch"):
        engine = make_engine(backbone, tmp_path, "openvino")
    assert engine.name == "torch"


def test_unknown_runtime_is_named(backbone, tmp_path):
    with pytest.raises(HeadstartError, match="runtime: expected one of"):
        make_engine(backbone, tmp_path, "tensorrt")


@pytest.mark.slow
def test_features_agree_across_runtimes(backbone, tmp_path):
    files = sorted((EXAMPLES / "train" / "elephant").iterdir())[:4]
    feats = {rt: extract_features(backbone, files, None, runtime=rt).X
             for rt in ("torch", "openvino", "onnxruntime")}
    for rt in ("openvino", "onnxruntime"):
        assert cosine_parity(feats[rt], feats["torch"]) > PARITY_MIN_COSINE


@pytest.mark.slow
def test_prediction_with_cached_engine_does_not_import_torch(trained):
    clf, model_dir = trained
    files = [str(f) for f in sorted((EXAMPLES / "test" / "giraffe").iterdir())[:3]]
    clf.predict_images(files)  # make sure the engine export for this backbone is cached
    code = (
        "import sys, headstart\n"
        f"clf = headstart.Classifier.load({str(model_dir)!r}, cache=False)\n"
        f"print(clf.predict({files!r}), clf.engine_.name)\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "['giraffe', 'giraffe', 'giraffe'] openvino" in r.stdout


@pytest.mark.slow
def test_int8_model_is_checked_saved_and_reloaded(tmp_path):
    from headstart import Classifier

    clf = Classifier(head="linear", int8=True).fit(EXAMPLES / "train")
    q = clf.summary_.int8
    assert q.variant.startswith("int8-") and clf.engine_.name == "openvino-int8"
    assert q.drop == pytest.approx(q.val_accuracy_fp32 - q.val_accuracy_int8)
    out = clf.save(tmp_path / "m8")
    assert (out / "backbone.int8.xml").is_file() and (out / "backbone.int8.bin").is_file()
    test = sorted((EXAMPLES / "test").rglob("*.jpg"))
    loaded = Classifier.load(out, cache=False)
    assert loaded.engine_.name == "openvino-int8"
    np.testing.assert_allclose(loaded.predict_proba(test), clf.predict_proba(test), atol=1e-5)
    truth = [p.parent.name for p in test]
    assert np.mean(np.asarray(loaded.predict(test)) == np.asarray(truth)) >= 0.9
