from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart import Classifier
from headstart.errors import HeadstartError
from headstart.insight.evaluate import evaluate
from headstart.fit.finetune import (AUTO_MIN_PER_CLASS, FinetuneConfig, _stages,
                                    choose_image_size, clear_gain, parse_mode, schedule,
                                    skip_reason)
from headstart.fit.callbacks import Callbacks

from .conftest import EXAMPLES

QUICK = dict(max_epochs=2, augment="none", image_size=64, batch_size=8, num_workers=0)


def test_parse_mode_and_config_errors():
    assert parse_mode("off") == "off" and parse_mode("last-3") == 3
    for bad in ("last-0", "some", "last-x"):
        with pytest.raises(HeadstartError, match="finetune: expected"):
            parse_mode(bad)
    with pytest.raises(HeadstartError, match="augment: expected"):
        FinetuneConfig(augment="extreme")  # checked on construction
    with pytest.raises(HeadstartError, match="image_size: expected"):
        FinetuneConfig(image_size=4)
    with pytest.raises(HeadstartError, match="keep"):
        FinetuneConfig(keep="worse")


def test_a_gain_within_noise_keeps_the_head():
    # issue 31: 9 validation images, a 2-image gain (88.9% -> 100%) is chance
    clear, why = clear_gain(8 / 9, 1.0, 9)
    assert not clear and "within the" in why and "head-only model is kept" in why
    assert "9 validation images" in why
    # the same gain on 900 images is not
    clear, why = clear_gain(0.889, 1.0, 900)
    assert clear and "more than the" in why
    assert not clear_gain(0.9, 0.9, 1000)[0] and not clear_gain(0.95, 0.90, 1000)[0]
    assert not clear_gain(0.5, 0.6, 10, margin_se=0)[0]  # one image is never enough
    # the margin shrinks with more images
    assert clear_gain(0.90, 0.92, 4000)[0] and not clear_gain(0.90, 0.92, 100)[0]


def test_auto_runs_a_fixed_schedule_and_keeps_the_last_epoch():
    cfg = schedule(FinetuneConfig(mode="auto", max_epochs=12))
    assert cfg.patience == 12 and not cfg.restore_best and cfg.max_minutes == 5.0
    assert schedule(FinetuneConfig(mode="auto", max_minutes=2)).max_minutes == 2
    given = FinetuneConfig(mode="last-3", patience=3)
    assert schedule(given) == given  # an explicit mode early-stops as asked


def test_image_size_rule(tmp_path):
    def images(side: int) -> list[Path]:
        out = []
        for i in range(3):
            p = tmp_path / f"{side}_{i}.png"
            Image.new("RGB", (side, side + 10)).save(p)
            out.append(p)
        return out
    assert choose_image_size(images(28), 224) == 64      # digits: twice 28, rounded to 64
    assert choose_image_size(images(80), 224) == 160     # 2 x 80 = 160
    assert choose_image_size(images(120), 224) == 224    # not much smaller: unchanged
    assert choose_image_size(images(600), 224) == 224


def test_stages_split_the_backbone_bottom_to_top(backbone):
    stages = _stages(backbone.model)
    assert len(stages) == 8  # stem, 7 block stages (the last with the final conv)
    assert stages[0][1][0].startswith("conv_stem")
    assert any(n.startswith("conv_head") for n in stages[-1][1])


@pytest.mark.slow
def test_auto_skips_small_data_with_reason():
    clf = Classifier(head="linear", finetune="auto").fit(EXAMPLES / "train")
    f = clf.summary_.finetune
    assert not f.ran and str(AUTO_MIN_PER_CLASS) in f.reason
    assert clf.summary_.val_accuracy == f.val_accuracy_head_only


def test_auto_fine_tunes_only_from_enough_images_per_class():
    cfg, n = FinetuneConfig(mode="auto"), AUTO_MIN_PER_CLASS
    y = np.repeat([0, 1, 2], n)
    assert skip_reason(cfg, y, np.ones(3 * n, bool)) is None
    train = np.ones(3 * n, bool)
    train[-1] = False  # validation rows do not count
    assert f"a class has {n - 1} training images, fewer than {n}" in skip_reason(cfg, y, train)
    assert skip_reason(FinetuneConfig(mode="last-2"), np.repeat([0, 1], 2),
                       np.ones(4, bool)) is None  # only auto decides


@pytest.mark.slow
def test_finetune_keeps_the_better_model_and_reports_both(tmp_path):
    epochs = []
    clf = Classifier(head="linear", finetune="last-2",
                     finetune_config=FinetuneConfig(**QUICK)).fit(
        EXAMPLES / "train", val=EXAMPLES / "test", callbacks=Callbacks(epoch=epochs.append))
    f = clf.summary_.finetune
    assert f.ran and f.image_size == 64 and f.unfrozen == ["stage 6", "stage 7"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(0 <= e["val_accuracy"] <= 1 and e["train_loss"] > 0 for e in epochs)
    clear, why = clear_gain(f.val_accuracy_head_only, f.val_accuracy_finetuned,
                            f.val_images)
    assert f.kept == ("finetuned" if clear else "head-only") and f.keep_reason == why
    assert clf.summary_.val_accuracy == pytest.approx(
        f.val_accuracy_finetuned if clear else f.val_accuracy_head_only)
    out = clf.save(tmp_path / "m")
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3


@pytest.mark.slow
def test_finetuned_model_reloads_and_evaluate_reproduces_val_accuracy(tmp_path):
    cfg = FinetuneConfig(**{**QUICK, "keep": "finetuned"})
    clf = Classifier(head="linear", finetune="all", finetune_config=cfg).fit(
        EXAMPLES / "train", val=EXAMPLES / "test")
    assert clf.summary_.finetune.kept == "finetuned"
    assert clf.summary_.val_accuracy == clf.summary_.finetune.val_accuracy_finetuned
    out = clf.save(tmp_path / "m")
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["backbone"]["preprocess"]["size"] == 64
    assert meta["backbone"]["weights_id"].startswith("finetuned-")
    loaded = Classifier.load(out, cache=False)
    files = sorted((EXAMPLES / "test").rglob("*.jpg"))
    np.testing.assert_allclose(loaded.predict_proba(files), clf.predict_proba(files),
                               atol=1e-4)
    m = evaluate(loaded, EXAMPLES / "test")
    assert m["accuracy"] == pytest.approx(clf.summary_.val_accuracy, abs=1e-9)


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path):
    cache = tmp_path / "cache"
    cfg = FinetuneConfig(**{**QUICK, "max_epochs": 1})
    first = Classifier(head="linear", finetune="last-1", finetune_config=cfg,
                       cache_dir=cache).fit(EXAMPLES / "train")
    assert first.summary_.finetune.epochs == 1
    more = FinetuneConfig(**{**QUICK, "max_epochs": 2, "resume": True})
    epochs = []
    again = Classifier(head="linear", finetune="last-1", finetune_config=more,
                       cache_dir=cache).fit(EXAMPLES / "train",
                                            callbacks=Callbacks(epoch=epochs.append))
    assert [e["epoch"] for e in epochs] == [2]  # epoch 1 was not run again
    assert again.summary_.finetune.epochs == 2
    assert [r["epoch"] for r in again.history_] == [1, 2]  # metrics.csv keeps epoch 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_on_cpu_gives_identical_weights_and_one_writer(tmp_path):
    data = EXAMPLES / "train"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PL_DISABLE_FORK": "1"}
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_script.py")),
                        str(data), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    missing = [i for i in (0, 1) if not (tmp_path / f"rank{i}.json").is_file()]
    assert not missing, f"rank(s) {missing} wrote nothing:\n{r.stderr[-3000:]}"
    reports = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [x["world_size"] for x in reports] == [2, 2]
    assert reports[0]["digest"] == reports[1]["digest"]
    assert [x["global_zero"] for x in reports] == [True, False]
    assert (tmp_path / "model-rank0" / "headstart.json").is_file()
    assert not (tmp_path / "model-rank1").exists()


@pytest.mark.slow
def test_a_fixed_schedule_can_validate_its_last_epoch_only(tmp_path):
    with pytest.raises(HeadstartError, match="validate_each_epoch"):
        FinetuneConfig(validate_each_epoch=False)  # early stopping needs every epoch
    cfg = FinetuneConfig(**{**QUICK, "max_epochs": 3, "patience": 3, "restore_best": False,
                            "validate_each_epoch": False, "keep": "finetuned"})
    clf = Classifier(head="linear", finetune="last-1", finetune_config=cfg,
                     cache_dir=tmp_path).fit(EXAMPLES / "train")
    rows = clf.history_
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(np.isnan(r["val_accuracy"]) for r in rows[:2])
    assert 0.0 <= rows[2]["val_accuracy"] <= 1.0
    assert clf.summary_.finetune.epochs == 3


@pytest.mark.slow
def test_max_minutes_bounds_training():
    cfg = FinetuneConfig(**{**QUICK, "max_epochs": 50, "patience": 50, "max_minutes": 0.002})
    clf = Classifier(head="linear", finetune="last-1", finetune_config=cfg).fit(
        EXAMPLES / "train")
    assert clf.summary_.finetune.epochs <= 2


@pytest.mark.slow
def test_cli_finetune_prints_epochs_and_writes_metrics(tmp_path):
    r = subprocess.run([sys.executable, "-m", "headstart", "train", str(EXAMPLES / "train"),
                        "--out", str(tmp_path / "m"), "--head", "linear", "--finetune",
                        "last-1", "--epochs", "2", "--image-size", "64", "--augment", "none"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "epoch   1" in r.stderr and "epoch   2" in r.stderr
    assert "finetune    last-1 at 64 px, 2 epochs" in r.stdout
    # the lines the user sees are headstart's: none of Lightning's own
    assert "eval mode" not in r.stderr and "Checkpoint directory" not in r.stderr, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()
            and not ln.startswith("epoch ")] == [], r.stderr
    assert len((tmp_path / "m" / "metrics.csv").read_text().splitlines()) == 3
    bad = subprocess.run([sys.executable, "-m", "headstart", "train", str(EXAMPLES / "train"),
                          "--out", str(tmp_path / "m2"), "--finetune", "last-zero"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--finetune" in bad.stderr and "Traceback" not in bad.stderr
