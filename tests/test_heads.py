from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from headstart.errors import HeadstartError
from headstart.heads import (MLP_MIN_PER_CLASS, AutoHead, LinearHead, MLPHead, head_from_state,
                             make_head)


def blobs(n_per_class=(40, 40, 40), d=32, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per_class), d)) * sep
    X = np.concatenate([c + rng.normal(size=(n, d)) for c, n in zip(centres, n_per_class)])
    y = np.concatenate([[k] * n for k, n in enumerate(n_per_class)])
    return X.astype(np.float32), y


@pytest.mark.parametrize("head", [LinearHead(), MLPHead(), AutoHead()])
def test_heads_learn_separable_classes(head):
    X, y = blobs()
    Xt, yt = blobs(seed=0)[0] + np.random.default_rng(9).normal(size=X.shape) * 0.1, y
    fitted = head.fit(X, y)
    assert fitted is head
    assert head.score(Xt, yt) > 0.95
    p = head.predict_proba(Xt)
    assert p.shape == (120, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert set(head.predict(Xt)) <= {0, 1, 2}


def test_sklearn_api_params_and_clone():
    h = LinearHead(cv=3, Cs=(0.1, 1.0))
    assert h.get_params()["cv"] == 3
    c = clone(h)
    assert c.get_params() == h.get_params() and not hasattr(c, "coef_")


def test_linear_cv_picks_a_c_and_reports_score():
    X, y = blobs(sep=0.6)
    h = LinearHead().fit(X, y)
    assert h.C_ in h.Cs and 0.4 < h.cv_score_ <= 1.0


def test_class_weights_help_the_minority_class():
    X, y = blobs((200, 12), d=16, sep=0.45, seed=2)
    Xt, yt = blobs((200, 200), d=16, sep=0.45, seed=2)  # same centres, balanced test
    recall = {}
    for cw in (None, "balanced"):
        pred = LinearHead(class_weight=cw, Cs=(1.0,), cv=2).fit(X, y).predict(Xt)
        recall[cw] = np.mean(pred[yt == 1] == 1)
    assert recall["balanced"] > recall[None]


def test_auto_head_reports_both_scores_and_picks_the_best():
    X, y = blobs((MLP_MIN_PER_CLASS,) * 3, sep=0.5)
    h = AutoHead().fit(X, y)
    assert set(h.cv_scores_) == {"linear", "mlp"}
    assert h.kind_ == max(h.cv_scores_, key=lambda k: (h.cv_scores_[k], k == "linear"))
    assert h.best_.oof_logits_.shape == (len(y), 3)  # kept for the estimate and calibration


def test_auto_head_skips_the_mlp_where_it_cannot_win():
    X, y = blobs((MLP_MIN_PER_CLASS - 1,) * 3, sep=0.5)
    h = AutoHead().fit(X, y)
    assert set(h.cv_scores_) == {"linear"} and h.kind_ == "linear"


def test_linear_out_of_fold_logits_are_from_heads_that_did_not_see_the_row():
    X, y = blobs(sep=0.5)
    h = LinearHead(cv=4).fit(X, y)
    oof = h.oof_logits_
    assert oof.shape == (len(y), 3) and (h.oof_rows_ == np.arange(len(y))).all()
    assert np.mean(oof.argmax(1) == y) == pytest.approx(h.cv_score_, abs=1e-9)
    assert h.score(X, y) >= h.cv_score_  # the refit on every row has seen them


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_state_round_trip_gives_identical_predictions(kind):
    X, y = blobs()
    h = make_head(kind).fit(X, y)
    again = head_from_state(kind, {k: v.copy() for k, v in h.state().items()}, len(h.classes_),
                            X.shape[1])
    np.testing.assert_array_equal(again.predict_proba(X), h.predict_proba(X))


def test_mlp_is_reproducible_with_a_seed():
    X, y = blobs(sep=0.8)
    a = MLPHead(random_state=4).fit(X, y).predict_proba(X)
    b = MLPHead(random_state=4).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_bad_input_is_named():
    with pytest.raises(HeadstartError, match="at least 2 classes"):
        LinearHead().fit(np.zeros((4, 3)), [1, 1, 1, 1])
    with pytest.raises(HeadstartError, match="head: expected one of"):
        make_head("svm")


def test_tiny_classes_without_cv_still_fit():
    X, y = blobs((1, 1, 2), sep=5.0)
    h = AutoHead().fit(X, y)
    assert h.kind_ == "linear" and (h.predict(X) == y).all()


def _hymenoptera(backbone, split: str, per_class: int | None = None):
    from headstart.backbone.features import extract_features

    from .conftest import shared

    files, y = [], []
    for i, c in enumerate(["ants", "bees"]):
        found = sorted(shared("hymenoptera", split, c).iterdir())[:per_class]
        files, y = files + found, y + [i] * len(found)
    return extract_features(backbone, files, None).X, np.array(y)


@pytest.mark.slow
def test_imagenet_classes_are_kept_where_they_help_and_survive_every_round_trip(backbone):
    import torch

    from headstart.errors import ModelError

    Xtr, ytr = _hymenoptera(backbone, "train", 5)  # ants and bees: ImageNet classes
    Xte, yte = _hymenoptera(backbone, "val")
    plain = LinearHead().fit(Xtr, ytr)
    h = LinearHead(imagenet=backbone.imagenet_head).fit(Xtr, ytr)
    assert plain.imagenet_block_ is None and h.imagenet_block_ is not None
    assert h.chosen()["imagenet_classes"] is True
    assert h.coef_.shape == (2, Xtr.shape[1] + 1000)
    assert h.score(Xte, yte) >= plain.score(Xte, yte) + 0.01  # 0.941 against 0.922
    again = head_from_state("linear", h.state(), 2, Xtr.shape[1])
    np.testing.assert_array_equal(again.predict_proba(Xte), h.predict_proba(Xte))
    with torch.no_grad():
        z = h.to_torch()(torch.from_numpy(Xte)).numpy()
    np.testing.assert_allclose(z, h.decision_function(Xte), atol=1e-4)
    bad = {**h.state(), "imagenet_bias": np.zeros(999, np.float32)}
    with pytest.raises(ModelError, match="imagenet"):
        head_from_state("linear", bad, 2, Xtr.shape[1])
    with pytest.raises(HeadstartError, match="imagenet: expected"):
        LinearHead(imagenet=(np.zeros((10, 7)), np.zeros(10))).fit(Xtr, ytr)
    many = np.repeat(Xtr, 9, axis=0), np.repeat(ytr, 9)  # 45 a class: not tried
    assert LinearHead(imagenet=backbone.imagenet_head).fit(*many).imagenet_block_ is None


def test_tapped_blocks_are_weighed_by_cv_and_survive_every_round_trip():
    """Rows of final features (noise here) then two tapped blocks (the signal): the head
    gives the blocks a weight, predicts from them, and its state, torch module and
    errors agree."""
    import torch

    from headstart.errors import ModelError
    from headstart.fit.summary import TrainingSummary

    rng = np.random.default_rng(0)
    signal, y = blobs((12, 12, 12), d=24, sep=1.5)
    rows = np.abs(np.concatenate([rng.normal(size=(36, 40)), signal], axis=1)).astype(np.float32)
    blocks = (8, 16)
    plain = LinearHead().fit(rows[:, :40], y)
    h = LinearHead(blocks=blocks).fit(rows, y)
    assert h.block_weight_ > 0 and h.chosen()["intermediate_blocks"] == [8, 16]
    said = TrainingSummary(head_settings=h.chosen()).head_choice()  # train's output, report
    assert f"+ 2 intermediate blocks at weight {h.block_weight_:g}, C=" in said
    tried = h.chosen()["cv_by_features"]  # each candidate's out-of-fold scores, recorded
    assert set(tried) == {"final", "final + blocks at 1"}
    assert tried["final + blocks at 1"]["log_loss"] < tried["final"]["log_loss"]
    assert h.coef_.shape == (3, 64) and h.mean_.shape == (40,)
    assert h.cv_score_ >= plain.cv_score_ + 0.2
    again = head_from_state("linear", h.state(), 3, 64)
    np.testing.assert_array_equal(again.predict_proba(rows), h.predict_proba(rows))
    assert again.blocks == blocks and again.block_weight_ == h.block_weight_
    with torch.no_grad():
        z = h.to_torch()(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(z, h.decision_function(rows), atol=1e-4)
    fixed = LinearHead(blocks=blocks, block_weights=(0.0,)).fit(rows, y)
    assert fixed.block_weight_ == 0 and fixed.chosen()["intermediate_blocks"] == []
    np.testing.assert_allclose(fixed.predict_proba(rows), plain.predict_proba(rows[:, :40]),
                               atol=1e-4)  # weight 0: the final features alone
    many = np.repeat(rows, 14, axis=0), np.repeat(y, 14)  # 168 a class: not tried
    assert LinearHead(blocks=blocks).fit(*many).block_weight_ == 0
    with pytest.raises(ModelError, match="blocks"):
        head_from_state("linear", {**h.state(), "blocks": np.array([8, 99])}, 3, 64)
    with pytest.raises(HeadstartError, match="blocks: expected"):
        LinearHead(blocks=(40, 30)).fit(rows, y)
    with pytest.raises(HeadstartError, match="blocks: the mlp head"):
        make_head("mlp", blocks=blocks)


def test_fold_coordinates_match_each_folds_own_projection():
    """The folds' row-space coordinates from one shared Gram matrix are those of projecting
    each fold on its own (wide rows), and plain rows where there are more rows than
    features; the logits of a solve in them agree."""
    from headstart.heads.solvers import fit_logistic, fold_coordinates, project

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(30, 200)), np.arange(30) % 3
    folds = [(np.setdiff1d(np.arange(30), te), te) for te in np.array_split(
        rng.permutation(30), 3)]
    for (tr, te), (Z, Zte) in zip(folds, fold_coordinates(X, folds)):
        Z0, V = project(X[tr])
        assert Z.shape == Z0.shape == (20, 20) and Zte.shape == (10, 20)
        np.testing.assert_allclose(np.abs(Z), np.abs(Z0), atol=1e-8)  # columns up to sign
        a, b = fit_logistic(Z, y[tr], 3, 1.0), fit_logistic(Z0, y[tr], 3, 1.0)
        np.testing.assert_allclose(Zte @ a.W.T + a.b, (X[te] @ V) @ b.W.T + b.b, atol=1e-5)
    narrow = X[:, :5]
    for (tr, te), (Z, Zte) in zip(folds, fold_coordinates(narrow, folds)):
        np.testing.assert_array_equal(Z, narrow[tr])
        np.testing.assert_array_equal(Zte, narrow[te])
