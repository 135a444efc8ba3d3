"""The CLI as a user runs it: a real subprocess, real images, real exit codes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES, copy_images


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    r = run("train", EXAMPLES / "train", "--out", out, "--head", "linear", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["classes"] == ["elephant", "giraffe"] and s["head"] == "linear"
    assert 0.0 <= s["val_accuracy"] <= 1.0 and s["out"] == str(out)
    return out


def test_train_human_output_and_corrupt_file_skipped(tmp_path):
    data = copy_images(tmp_path / "d", 5)
    (data / "giraffe" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run("train", data, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "corrupt.jpg" in r.stderr and "cannot decode" in r.stderr
    assert "validation  accuracy" in r.stdout and "giraffe 5" in r.stdout
    assert (tmp_path / "m" / "headstart.json").is_file()


def test_predict_json_csv_and_counts(model_dir, tmp_path):
    folder = EXAMPLES / "test"
    r = run("predict", model_dir, folder, "--json", "--csv", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["predictions"]) == 30 and sum(out["counts"].values()) == 30
    right = sum(Path(p["path"]).parent.name == p["label"] for p in out["predictions"])
    assert right >= 27
    for p in out["predictions"]:
        assert p["probability"] == max(p["probabilities"].values())
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["label"] for r in rows] == [p["label"] for p in out["predictions"]]
    human = run("predict", model_dir, next((folder / "giraffe").iterdir()))
    assert human.returncode == 0 and "counts" in human.stdout


def test_evaluate_json_has_accuracy(model_dir):
    r = run("evaluate", model_dir, EXAMPLES / "test", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["n_images"] == 30 and m["accuracy"] >= 0.9
    human = run("evaluate", model_dir, EXAMPLES / "test")
    assert human.stdout.startswith("accuracy") and "precision" in human.stdout


def test_bad_paths_are_one_line_errors(model_dir, tmp_path):
    assert_user_error(run("train", tmp_path / "nowhere", "--out", tmp_path / "m"),
                      "not found")
    assert_user_error(run("predict", tmp_path / "no-model", EXAMPLES), "model directory")
    assert_user_error(run("predict", model_dir, tmp_path / "none.jpg"), "not found")
    assert_user_error(run("evaluate", model_dir, tmp_path / "none"), "not found")


def test_one_class_data_is_a_user_error(tmp_path):
    data = copy_images(tmp_path / "d", 3)
    shutil.rmtree(data / "elephant")
    assert_user_error(run("train", data, "--out", tmp_path / "m"), "at least 2 classes")


def test_unknown_backbone_and_head_are_user_errors(tmp_path):
    data = copy_images(tmp_path / "d", 2)
    assert_user_error(run("train", data, "--out", tmp_path / "m", "--backbone", "resnet5000"),
                      "unknown backbone")
    assert_user_error(run("train", data, "--out", tmp_path / "m", "--backbone", "resnet18"),
                      "--weights FILE")
    assert_user_error(run("train", data, "--out", tmp_path / "m", "--head", "svm"), "--head")


def test_backbones_lists_offline_default():
    r = run("backbones", "--json")
    assert r.returncode == 0
    rows = {x["name"]: x["status"] for x in json.loads(r.stdout)}
    assert rows["efficientnet_lite0"] == "offline"
    assert "efficientnet_lite0" in run("backbones").stdout
