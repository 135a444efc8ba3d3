from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from headstart import Classifier
from headstart.insight.evaluate import evaluate
from headstart.fit.finetune import FinetuneConfig
from headstart.fit.scratch import scratch_image_size

from .conftest import copy_digits


def test_scratch_image_size_rule(tmp_path):
    def sized(side: int) -> list:
        p = tmp_path / f"{side}.png"
        Image.new("L", (side, side)).save(p)
        return [p]
    assert scratch_image_size(sized(28)) == 32
    assert scratch_image_size(sized(64)) == 64
    assert scratch_image_size(sized(70)) == 96
    assert scratch_image_size(sized(500)) == 128


@pytest.fixture(scope="module")
def scratch_model(tmp_path_factory):
    data = copy_digits(tmp_path_factory.mktemp("digits"))
    cfg = FinetuneConfig(max_epochs=8, patience=8, augment="none", lr=3e-3, batch_size=16,
                         num_workers=0)
    clf = Classifier(from_scratch=True, finetune_config=cfg).fit(data)
    return data, clf, clf.save(tmp_path_factory.mktemp("m") / "scratch")


@pytest.mark.slow
def test_from_scratch_trains_a_random_init_cnn(scratch_model):
    data, clf, out = scratch_model
    s = clf.summary_.from_scratch
    assert s.arch == "resnet10t" and s.image_size == 32 and s.epochs >= 1
    assert s.train_images == 90 and s.val_images == 45
    assert clf.summary_.val_accuracy == s.val_accuracy
    assert s.val_accuracy > 0.5  # 3 classes: chance is 0.33
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["backbone"]["timm_name"] == "resnet10t"
    assert meta["backbone"]["weights_id"].startswith("scratch-")
    assert (out / "metrics.csv").is_file()


@pytest.mark.slow
def test_scratch_model_predicts_and_evaluates_like_any_model(scratch_model):
    data, clf, out = scratch_model
    loaded = Classifier.load(out, cache=False)
    files = sorted((data / "val").rglob("*.png"))
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files),
                               atol=1e-4)
    m = evaluate(loaded, data)
    assert m["n_images"] == 45
    assert m["accuracy"] == pytest.approx(clf.summary_.val_accuracy, abs=1e-9)


@pytest.mark.slow
def test_from_scratch_model_exports_with_parity(scratch_model, tmp_path):
    from headstart.deploy.export import export

    data, _, out = scratch_model
    r = export(out, "onnx", tmp_path / "scratch.onnx", samples=[data / "val"])
    assert r["parity"]["ok"] and r["parity"]["max_abs_diff"] < 1e-4
    assert r["metadata"]["preprocess"]["size"] == 32
