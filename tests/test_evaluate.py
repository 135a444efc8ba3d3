from __future__ import annotations

import shutil

import numpy as np
import pytest

from headstart.errors import DataError
from headstart.insight.evaluate import classification_metrics, evaluate, scored_metrics, wilson_ci

from .conftest import EXAMPLES


def test_metrics_on_known_predictions():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)


@pytest.mark.slow
def test_evaluate_uses_the_held_out_split(trained, tmp_path):
    clf, _ = trained
    shutil.copytree(EXAMPLES / "train", tmp_path / "d" / "train")
    shutil.copytree(EXAMPLES / "test", tmp_path / "d" / "test")
    (tmp_path / "d" / "test" / "giraffe" / "broken.jpg").write_text("oops")
    m = evaluate(clf, tmp_path / "d")
    assert m["n_images"] == 30
    assert m["accuracy"] >= 0.9
    assert [s["reason"] for s in m["skipped"]] == ["not an image: a text file"]
    assert sum(map(sum, m["confusion_matrix"])) == 30


@pytest.mark.slow
def test_evaluate_rejects_unknown_classes(trained, tmp_path):
    clf, _ = trained
    shutil.copytree(EXAMPLES / "test" / "giraffe", tmp_path / "d" / "zebra")
    with pytest.raises(DataError, match="zebra"):
        evaluate(clf, tmp_path / "d")


def test_wilson_interval_is_right_at_the_edges_and_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    lo, hi = wilson_ci(30, 30)
    assert lo < 0.90 and hi == 1.0
    lo, hi = wilson_ci(0, 30)
    assert lo == 0.0 and hi > 0.10
    for k, n in [(30, 30), (0, 30), (8, 10), (1, 3), (143, 153)]:
        ref = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert np.allclose(wilson_ci(k, n), (ref.low, ref.high), atol=1e-9)


def test_a_perfect_score_never_gets_a_zero_width_interval():
    y = np.repeat(np.arange(2), 15)
    logits = np.stack([y == 0, y == 1], axis=1).astype(float) * 5
    m = scored_metrics(y, logits, 1.0, ["a", "b"])
    lo, hi = m["accuracy_ci95"]
    assert m["accuracy"] == 1.0 and lo < 0.90 and hi == 1.0
    assert m["per_class"]["a"]["recall_ci95"][0] < 0.80  # 15/15
    assert m["macro_f1_ci95"] is None  # a bootstrap cannot say anything here
    assert "Wilson" in m["ci_method"]
    wrong = scored_metrics(y, -logits, 1.0, ["a", "b"])
    assert wrong["accuracy"] == 0.0 and wrong["accuracy_ci95"][1] > 0.10
