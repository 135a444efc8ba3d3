from __future__ import annotations

import numpy as np
import pytest

from headstart import Classifier
from headstart.fit.calibration import (OutOfDistribution, expected_calibration_error,
                                   fit_temperature, robust_quantile, softmax)

from .conftest import EXAMPLES, shared


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(6000, 4))
    p = softmax(logits, 2.0)
    y = np.array([rng.choice(4, p=row / row.sum()) for row in p.astype(np.float64)])
    assert fit_temperature(logits, y) == pytest.approx(2.0, rel=0.1)


def test_a_handful_of_images_cannot_pull_the_temperature_far_from_one():
    # 20 confident, correct held-out predictions: plain maximum likelihood sharpens
    # without limit (T at the 0.05 bound); the prior keeps T near 1
    logits = np.tile([[2.0, 0.0]], (20, 1))
    y = np.zeros(20, int)
    assert fit_temperature(logits, y, prior_sd=None) < 0.06
    shrunk = fit_temperature(logits, y)
    assert 0.3 < shrunk < 1.0
    many = np.tile(logits, (50, 1))  # the same evidence from 1000 images moves T further
    assert fit_temperature(many, np.zeros(1000, int)) < shrunk


def test_expected_calibration_error():
    sure = np.tile([[1.0, 0.0]], (10, 1))
    assert expected_calibration_error(sure, np.zeros(10, int)) == pytest.approx(0.0)
    p = np.tile([[0.9, 0.1]], (10, 1))
    assert expected_calibration_error(p, np.array([0, 1] * 5)) == pytest.approx(0.4)


def test_robust_quantile_is_near_the_normal_quantile_for_many_samples():
    s = np.random.default_rng(1).normal(size=20000)
    assert robust_quantile(s, 0.95) == pytest.approx(1.645, abs=0.05)


def test_robust_quantile_keeps_95_percent_of_skewed_scores():
    s = np.random.default_rng(2).lognormal(sigma=0.8, size=300)
    assert np.mean(s > robust_quantile(s, 0.95)) <= 0.05


@pytest.fixture(scope="module")
def model():
    return Classifier(head="linear").fit(EXAMPLES / "train")


@pytest.mark.slow
def test_unfamiliar_images_come_out_unknown(model):
    safari = sorted((EXAMPLES / "test").rglob("*.jpg"))
    insects = sorted(shared("hymenoptera", "val").rglob("*.jpg"))[::4]
    known, odd = model.predict_images(safari), model.predict_images(insects)
    assert odd.rejected.mean() >= 0.9 and set(odd.labels) == {"unknown"}
    assert known.rejected.mean() <= 0.1
    from sklearn.metrics import roc_auc_score
    scores = np.r_[known.ood_score, odd.ood_score]
    truth = np.r_[np.zeros(len(safari)), np.ones(len(insects))]
    assert roc_auc_score(truth, scores) >= 0.95
    assert odd.counts()["unknown"] == len(insects)


@pytest.mark.slow
def test_probabilities_are_temperature_scaled_and_unknown_can_be_off(model, tmp_path):
    files = sorted(shared("hymenoptera", "val", "ants").iterdir())[:3]
    pred = model.predict_images(files)
    np.testing.assert_allclose(pred.proba, softmax(pred.logits, model.temperature_),
                               rtol=1e-5)
    assert model.temperature_ != 1.0
    c = model.summary_.calibration
    assert c.ece_after <= c.ece_before + 0.01  # MAP T: the NLL never worsens, ECE may a hair
    out = model.save(tmp_path / "m")
    loaded = Classifier.load(out, unknown=False)
    assert loaded.temperature_ == pytest.approx(model.temperature_)
    assert "unknown" not in loaded.predict(files)
    again = Classifier.load(out)
    assert again.predict(files) == model.predict(files) == ["unknown"] * 3


def test_ood_detector_state_round_trip():
    X = np.random.default_rng(2).normal(size=(30, 8))
    ood = OutOfDistribution(k=3).fit(X)
    again = OutOfDistribution.from_state(ood.config(), ood.state(), 8)
    np.testing.assert_array_equal(again.score(X), ood.score(X))
    assert again.threshold_ == ood.threshold_
