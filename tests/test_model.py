from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from headstart import Classifier
from headstart.errors import DataError, ModelError

from .conftest import EXAMPLES


def _test_images():
    return sorted((EXAMPLES / "test").rglob("*.jpg"))


@pytest.mark.slow
def test_fit_summary_and_accuracy(trained):
    clf, _ = trained
    s = clf.summary_
    assert clf.classes_ == ["elephant", "giraffe"]
    assert s.train_counts == {"elephant": 10, "giraffe": 10}
    # no validation split: every training image is predicted out of fold (not 4 held out)
    assert s.val_images == 20 and 0.0 <= s.val_accuracy <= 1.0
    assert s.val_source.startswith("cross-validation")
    assert s.calibration.fitted_on.startswith("cross-validated") and s.calibration.images == 20
    truth = [p.parent.name for p in _test_images()]
    acc = np.mean(np.asarray(clf.predict(_test_images())) == np.asarray(truth))
    assert acc >= 0.9


@pytest.mark.slow
def test_loaded_model_predicts_exactly_like_the_fitted_one(trained, tmp_path):
    clf, out = trained
    loaded = Classifier.load(out, cache=False)  # recompute features with the saved backbone
    np.testing.assert_array_equal(loaded.predict_proba(_test_images()),
                                  clf.predict_proba(_test_images()))
    assert loaded.classes_ == clf.classes_ and loaded.summary_ == clf.summary_


@pytest.mark.slow
def test_model_directory_is_safetensors_and_json(trained):
    _, out = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "backbone.fp32.bin", "backbone.fp32.xml",  # the engine travels with the model
        "backbone.safetensors", "hashes.safetensors", "head.safetensors", "headstart.json",
        "ood.safetensors"]
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["backbone"]["preprocess"]["size"] == 224
    assert meta["head"]["kind"] == "linear"
    for f in out.iterdir():
        assert not f.read_bytes().startswith(b"\x80")  # no pickle


@pytest.mark.slow
def test_save_replaces_a_model_atomically_and_refuses_other_folders(trained, tmp_path):
    clf, _ = trained
    target = tmp_path / "m"
    clf.save(target)
    first = json.loads((target / "headstart.json").read_text())["summary"]["trained_at"]
    summary = clf.summary_
    clf.summary_ = replace(summary, trained_at="later")
    clf.save(target)  # a complete model is replaced
    clf.summary_ = summary
    assert json.loads((target / "headstart.json").read_text())["summary"]["trained_at"] \
        == "later" != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp leftovers
    (target / "headstart.json").write_text("{}")  # not a model signature (another tool's?)
    with pytest.raises(ModelError, match="not a headstart model"):
        clf.save(target)
    assert (target / "headstart.json").read_text() == "{}"
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a headstart model"):
        clf.save(precious)
    assert (precious / "keep.txt").read_text() == "mine"


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Classifier.load(tmp_path / "none")
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelError, match="not a headstart model"):
        Classifier.load(tmp_path / "x")
    with pytest.raises(ModelError, match="not fitted"):
        Classifier().predict([])


@pytest.mark.slow
def test_fit_from_paths_and_labels_and_pil_prediction(tmp_path):
    files = sorted((EXAMPLES / "train").rglob("*.jpg"))
    labels = [f.parent.name for f in files]
    clf = Classifier(head="linear").fit(files, labels)
    assert clf.classes_ == ["elephant", "giraffe"]
    img = Image.open(_test_images()[-1])
    assert clf.predict([img]) == ["giraffe"]


@pytest.mark.slow
def test_unreadable_image_in_predict(trained, tmp_path):
    clf, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="cannot be read"):
        clf.predict([bad])
    pred = clf.predict_images([bad] + _test_images()[:2])
    assert len(pred.sources) == 2 and pred.skipped[0].path == str(bad)
    assert sum(pred.counts().values()) == 2


def test_validation_fraction_is_checked(small_data):
    with pytest.raises(DataError, match="val_fraction"):
        Classifier(val_fraction=1.5).fit(small_data)


@pytest.mark.slow
def test_a_loaded_model_predicts_with_its_own_engine_and_without_pytorch(trained, tmp_path):
    """With a fresh cache (a new machine), predict neither re-exports nor imports torch."""
    _, out = trained
    image = str(_test_images()[0])
    code = ("import sys; from headstart import Classifier; "
            f"c = Classifier.load({str(out)!r}); p = c.predict_images([{image!r}]); "
            "print(c.engine_.name, 'torch' in sys.modules, p.labels[0])")
    env = {**os.environ, "HEADSTART_CACHE": str(tmp_path / "fresh")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    engine, torch_loaded, label = r.stdout.split()
    assert engine == "openvino" and torch_loaded == "False" and label in ("elephant", "giraffe")
    assert not list((tmp_path / "fresh").glob("runtimes/*/openvino/model.xml"))  # no export
