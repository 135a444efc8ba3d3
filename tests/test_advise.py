from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from headstart.insight.advise import MARGIN, OPTIONS, Option, advise, recommend
from headstart.insight.curves import fit_curve
from headstart.fit.domain import SIMILARITY_FAR, SIMILARITY_NEAR, domain_gap
from headstart.backbone.features import extract_features
from headstart.cli.console import print_advice

from .conftest import EXAMPLES, copy_digits, invoke_cli, shared

TRANSFER = {"head only", "head + fine-tune"}
QUICK = dict(ft_epochs=2, scratch_epochs=3)


def consistent(r: dict) -> bool:
    """The recommendation follows from the options advise itself measured: the best
    prediction, or the simplest of those too close to call with it."""
    pred = {k: o["predicted"] for k, o in r["options"].items()}
    best = max(pred, key=pred.get)
    tied = set(r["too_close_to_call"]) | {r["recommendation"]}
    simplest = min(tied, key=OPTIONS.index)
    return (r["recommendation"] == simplest and (best in tied)
            and r["predicted_accuracy"] == pred[r["recommendation"]]
            and r["interval"][0] <= r["predicted_accuracy"] <= r["interval"][1])


def option(name: str, acc: float, val: int, images: int = 100, target: int = 100,
           curve: list | None = None) -> Option:
    return Option(name, acc, images, val, fit_curve(curve or [(images, acc)]), target)


def test_recommend_rules():
    # clear winners, measured on many validation images
    many = 5000
    assert recommend({"head only": option("head only", 0.80, many),
                      "train from scratch": option("train from scratch", 0.95, many)}
                     )[0] == "train from scratch"
    choice, predicted, reasons, tied = recommend({
        "head only": option("head only", 0.80, many),
        "head + fine-tune": option("head + fine-tune", 0.90, many),
        "train from scratch": option("train from scratch", 0.85, many)})
    assert (choice, predicted, tied) == ("head + fine-tune", 0.90, []) and reasons
    # nine validation images: 1.0 against 0.889 is too close to call; the simpler option
    choice, _, reasons, tied = recommend({"head only": option("head only", 8 / 9, 9),
                                          "head + fine-tune": option("head + fine-tune",
                                                                     1.0, 9)})
    assert choice == "head only" and tied == ["head + fine-tune"]
    assert any("too close to call" in r for r in reasons)
    # a margin under 1 point is never a win, however many images
    choice, _, _, tied = recommend({"head only": option("head only", 0.90, 10**6),
                                    "head + fine-tune": option("head + fine-tune",
                                                               0.90 + MARGIN / 2, 10**6)})
    assert choice == "head only" and tied == ["head + fine-tune"]


def test_recommend_extrapolates_and_says_what_more_images_bring():
    # from scratch measured below the head with 500 images, but rising steeply: with the
    # user's 4,000 images it is expected to win
    head = option("head only", 0.90, 1000, 500, 4000, [(250, 0.89), (500, 0.90)])
    scratch = option("train from scratch", 0.88, 1000, 500, 4000, [(250, 0.80), (500, 0.88)])
    assert scratch.predicted > head.predicted and scratch.predicted > scratch.measured
    assert scratch.interval[0] < scratch.predicted < scratch.interval[1]
    choice, _, reasons, _ = recommend({"head only": head, "train from scratch": scratch})
    assert choice == "train from scratch"
    rising = option("head only", 0.80, 1000, 100, 100, [(50, 0.70), (100, 0.80)])
    _, _, reasons, _ = recommend({"head only": rising})
    assert any(r.startswith("collecting 100 more images (2x)") for r in reasons), reasons


@pytest.mark.slow
def test_domain_gap_near_for_photos_far_for_digits(backbone, tmp_path):
    photos = sorted((EXAMPLES / "test").rglob("*.jpg"))
    digits = sorted((copy_digits(tmp_path, train=10, val=0) / "train").rglob("*.png"))
    near = domain_gap(backbone, extract_features(backbone, photos).X)
    far = domain_gap(backbone, extract_features(backbone, digits).X)
    assert near.level == "near" and far.level == "far"
    assert near.imagenet_similarity >= SIMILARITY_NEAR > SIMILARITY_FAR > \
        far.imagenet_similarity
    assert near.feature_distance < far.feature_distance
    assert near.imagenet_max_prob > 0.3 > 0.2 > far.imagenet_max_prob
    assert 0 < near.imagenet_entropy < far.imagenet_entropy < 1


@pytest.mark.slow
def test_domain_gap_scale_on_every_shared_dataset_and_synthetic_extremes(backbone,
                                                                        tmp_path):
    rng = np.random.default_rng(0)
    for kind in ("noise", "flat"):
        for i in range(8):
            a = (rng.integers(0, 256, (224, 224, 3)) if kind == "noise" else
                 np.full((224, 224, 3), rng.integers(0, 256, 3)))
            Image.fromarray(a.astype(np.uint8)).save(tmp_path / f"{kind}{i}.png")
    levels = {}
    for name in ("hymenoptera", "safari", "digits", "steel_defects", "aerial",
                 "blood_cells", "textures"):
        root = shared(name)
        root = root / "train" if (root / "train").is_dir() else root
        files = [f for c in sorted(root.iterdir()) for f in sorted(c.iterdir())[:6]]
        levels[name] = domain_gap(backbone, extract_features(backbone, files).X).level
    for kind in ("noise", "flat"):
        files = sorted(tmp_path.glob(f"{kind}*.png"))
        levels[kind] = domain_gap(backbone, extract_features(backbone, files).X).level
    assert levels.pop("hymenoptera") == levels.pop("safari") == "near"
    assert levels.pop("digits") == levels.pop("noise") == levels.pop("flat") == "far"
    assert set(levels.values()) <= {"moderate", "far"}, levels


@pytest.mark.slow
def test_advise_on_few_photos_recommends_transfer_learning(capsys):
    r = advise(EXAMPLES / "train", **QUICK)
    assert r["domain_gap"]["level"] == "near"
    assert r["recommendation"] in TRANSFER
    assert consistent(r)
    assert r["data_size"]["train_counts"] == {"elephant": 8, "giraffe": 8}
    assert r["learning_curve"][-1]["images"] == 16 and r["work"]["repeats"] == 3
    assert r["reasons"][-1].startswith("every accuracy here is measured on held-out images")
    json.dumps(r)  # serialisable as documented
    print_advice(r)
    assert "skipped" not in capsys.readouterr().out
    print_advice({**r, "data_size": {**r["data_size"], "skipped": 3}})
    assert "; 3 file(s) skipped (unreadable" in capsys.readouterr().out


@pytest.mark.slow
def test_advise_cli_on_digits_is_far_and_consistent(tmp_path):
    data = copy_digits(tmp_path / "d", train=30, val=10)
    r = subprocess.run([sys.executable, "-m", "headstart", "advise", str(data),
                        "--max-images", "60", "--json"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["domain_gap"]["level"] == "far"
    assert out["data_size"]["val_images"] == 30
    assert out["accuracy"]["from_scratch"] is not None
    assert consistent(out)


@pytest.mark.slow
def test_train_warns_when_images_are_far_from_imagenet(tmp_path):
    data = copy_digits(tmp_path / "d", train=10, val=5)
    r = subprocess.run([sys.executable, "-m", "headstart", "train", str(data), "--out",
                        str(tmp_path / "m"), "--head", "linear"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # said once, beside the accuracy it did or did not cost (not as a warning above it)
    domain = [ln for ln in r.stdout.splitlines() if ln.startswith("domain")]
    assert len(domain) == 1 and "far:" in domain[0], r.stdout
    accuracy = next(ln for ln in r.stdout.splitlines() if ln.startswith("validation"))
    assert ("headstart advise" in domain[0]) != ("work for these images anyway" in domain[0])
    percent = float(accuracy.split()[2].rstrip("%"))
    assert ("work for these images anyway" in domain[0]) == (percent >= 90)
    assert "headstart advise" not in r.stderr
    assert json.loads((tmp_path / "m" / "headstart.json").read_text()
                      )["summary"]["domain_gap"]["level"] == "far"


@pytest.mark.slow
def test_train_does_not_warn_on_photos(trained):
    clf, _ = trained
    assert clf.summary_.domain_gap.level == "near"


def test_settings_are_checked():
    r = invoke_cli("advise", EXAMPLES / "train", "--max-images", "3")
    assert r.returncode == 2 and "--max-images: expected an integer >= 20, got 3" in r.stderr


@pytest.mark.slow
def test_advice_is_the_same_on_a_busy_machine(tmp_path):
    """Fixed work, not seconds: two busy loops beside it change nothing it measures."""
    data = copy_digits(tmp_path / "d", classes=("0", "1"), train=10, val=5)
    fixed = dict(ft_epochs=1, scratch_epochs=2)
    quiet = advise(data, cache_dir=tmp_path / "c", **fixed)
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = advise(data, cache_dir=tmp_path / "c", **fixed)
    finally:
        for p in loops:
            p.kill()
    assert busy["recommendation"] == quiet["recommendation"]
    assert busy["accuracy"] == quiet["accuracy"]
    assert busy["options"] == quiet["options"]
