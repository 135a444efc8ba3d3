"""The model directory: its signature, nothing of the user's ever lost, every file checked
against its digest, every field of headstart.json validated, saves that survive crashes,
and an old model directory that still predicts the same."""

from __future__ import annotations

import hashlib
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from headstart import Classifier, ModelError
from headstart.io.files import atomic_folder, recover_folder
from headstart.io.bundle import check_destination, is_model_dir, read_meta

from .conftest import EXAMPLES, assert_user_error, copy_images, invoke_cli, run_cli

FIXTURE = Path(__file__).with_name("fixtures") / "model-v0.1.0"
REPO = Path(__file__).resolve().parents[1]
IMAGE = sorted((EXAMPLES / "test" / "giraffe").iterdir())[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model written by today's `headstart train` (features come from the session cache)."""
    out = tmp_path_factory.mktemp("bundle") / "model"
    r = run_cli("train", EXAMPLES / "train", "--out", out, "--head", "linear")
    assert r.returncode == 0, r.stderr
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_model_written_before_digests_loads_and_predicts_the_same():
    expected = json.loads(FIXTURE.with_name("model-v0.1.0.expected.json").read_text())
    assert "files" not in json.loads((FIXTURE / "headstart.json").read_text())
    clf = Classifier.load(FIXTURE)
    files = [REPO / p["path"] for p in expected["predictions"]]
    pred = clf.predict_images(files)
    assert pred.labels == [p["label"] for p in expected["predictions"]]
    want = np.asarray([list(p["probabilities"].values()) for p in expected["predictions"]])
    np.testing.assert_allclose(pred.proba, want, atol=1e-5)
    np.testing.assert_allclose(pred.ood_score, [p["unknown_score"]
                                                for p in expected["predictions"]], atol=1e-5)


def test_old_model_with_a_replaced_backbone_never_reuses_its_engine(tmp_path):
    """Without recorded digests, the file's own digest joins the backbone identity."""
    before = Classifier.load(FIXTURE).backbone_.identity()
    m = copy_model(FIXTURE, tmp_path / "m")
    w = load_file(str(m / "backbone.safetensors"))
    save_file({k: v * 1.01 if v.dtype.kind == "f" else v for k, v in w.items()},
              str(m / "backbone.safetensors"))
    assert Classifier.load(m).backbone_.identity() != before


@pytest.mark.slow
def test_signature_not_a_file_name(model, tmp_path):
    assert is_model_dir(model)
    other = tmp_path / "other"
    other.mkdir()
    (other / "headstart.json").write_text('{"tool": "another program"}')
    (other / "important.txt").write_text("the user's")
    assert not is_model_dir(other)
    r = run_cli("train", EXAMPLES / "train", "--out", other, timeout=120)
    assert_user_error(r, "not a headstart model")
    assert sorted(p.name for p in other.iterdir()) == ["headstart.json", "important.txt"]
    assert (other / "important.txt").read_text() == "the user's"


@pytest.mark.slow
def test_retraining_never_deletes_files_the_user_added(model, tmp_path):
    m = copy_model(model, tmp_path / "m")
    (m / "notes.txt").write_text("mine")
    r = run_cli("train", EXAMPLES / "train", "--out", m, timeout=120)
    assert_user_error(r, "notes.txt", "would delete")
    assert (m / "notes.txt").read_text() == "mine" and is_model_dir(m)


def test_out_under_a_file_is_one_error_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_user_error(invoke_cli("train", EXAMPLES / "train", "--out",
                                 tmp_path / "afile" / "m"), "is a file")
    with pytest.raises(ModelError, match="not a folder"):
        check_destination(tmp_path / "afile")


def _limit_file_size() -> None:  # runs in the child: writes past 2 MB fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


@pytest.mark.slow
def test_failed_save_is_one_error_line_and_keeps_the_previous_model(model, tmp_path):
    """A save that cannot be written (here: a file-size limit, as a full disk does) leaves
    the previous model whole and no temporary folder behind."""
    m = copy_model(model, tmp_path / "m")
    before = (m / "headstart.json").read_text()
    r = run_cli("train", EXAMPLES / "train", "--out", m, "--seed", "3",
                preexec_fn=_limit_file_size, timeout=300)
    assert_user_error(r, "cannot write the model", "nothing was changed")
    assert (m / "headstart.json").read_text() == before
    Classifier.load(m)  # every digest still matches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("how", ["truncated", "swapped", "pickled"])
@pytest.mark.slow
def test_changed_backbone_file_is_refused_even_with_a_cached_engine(model, tmp_path, how):
    m = copy_model(model, tmp_path / "m")
    f = m / "backbone.safetensors"
    if how == "truncated":
        f.write_bytes(f.read_bytes()[: 1 << 20])
    elif how == "swapped":
        w = load_file(str(f))
        save_file({k: v * 0.99 if v.dtype.kind == "f" else v for k, v in w.items()}, str(f))
    else:
        f.write_bytes(b"\x80\x04\x95" + b"\0" * 64 + b".")
    r = run_cli("predict", m, IMAGE, timeout=120)
    assert_user_error(r, "backbone.safetensors has changed since the model was saved")


def _tamper(meta: dict, how: str) -> object:
    if how == "list":
        return [meta]
    meta = dict(meta)
    if how == "one class":
        meta["classes"] = meta["classes"][:1]
    elif how == "three classes":
        meta["classes"] = meta["classes"] + ["zebra"]
    elif how == "no backbone":
        del meta["backbone"]
    elif how == "hot":
        meta["temperature"] = "hot"
    elif how == "zero":
        meta["temperature"] = 0
    elif how == "tiny":  # accepted once: every probability 0 or 1
        meta["temperature"] = 1e-300
    elif how == "nan threshold":
        meta["ood"] = {**meta["ood"], "threshold": "NaN"}
    elif how == "bad size":
        meta["backbone"] = {**meta["backbone"], "preprocess": {
            **meta["backbone"]["preprocess"], "size": -3}}
    elif how == "missing block":  # lite0 has blocks 0-6
        meta["backbone"] = {**meta["backbone"], "taps": [3, 4, 5, 9],
                            "tap_widths": [80, 112, 192, 320]}
    elif how == "swapped widths":
        meta["backbone"] = {**meta["backbone"], "taps": [3, 4, 5, 6],
                            "tap_widths": [80, 112, 320, 192]}
    elif how == "grid of a string":
        meta["backbone"] = {**meta["backbone"], "taps": [4, 5, 6], "tap_grid": "3",
                            "tap_widths": [112, 192, 320]}
    elif how == "widths of another grid":  # 3 x 3 cells, widths of the block means
        meta["backbone"] = {**meta["backbone"], "taps": [4, 5, 6], "tap_grid": 3,
                            "tap_widths": [112, 192, 320]}
    return meta


TAMPERED = {"list": "is not a headstart model", "one class": "classes",
            "three classes": "coef must have shape (3, 1280)", "no backbone": "backbone",
            "hot": "temperature", "zero": "temperature",
            "tiny": "temperature must be a number from 0.01 to 1000, got 1e-300",
            "nan threshold": "ood.threshold",
            "bad size": "backbone.preprocess.size",
            "missing block": "backbone.taps must be blocks of tf_efficientnet_lite0",
            "swapped widths": "backbone.taps must be blocks of tf_efficientnet_lite0",
            "grid of a string": "backbone.tap_grid must be an integer from 1 to 8",
            "widths of another grid": "backbone.taps must be blocks of tf_efficientnet_lite0"}


@pytest.mark.slow
def test_tampered_metadata_is_one_error_line_naming_the_field(model, tmp_path):
    meta = json.loads((model / "headstart.json").read_text())
    for how, needle in TAMPERED.items():
        m = copy_model(model, tmp_path / how.replace(" ", "_"))
        (m / "headstart.json").write_text(json.dumps(_tamper(meta, how)))
        assert_user_error(run_cli("predict", m, IMAGE, timeout=120), needle)


@pytest.mark.parametrize("how", ["keys", "shape"])
@pytest.mark.slow
def test_head_file_with_wrong_keys_or_shapes_is_refused(model, tmp_path, how):
    m = copy_model(model, tmp_path / "m")
    head = load_file(str(m / "head.safetensors"))
    if how == "keys":
        head["weights"] = head.pop("coef")
    else:
        head["coef"] = head["coef"][:, :100].copy()
    save_file(head, str(m / "head.safetensors"))
    meta = json.loads((m / "headstart.json").read_text())
    meta["files"]["head.safetensors"] = hashlib.sha256(
        (m / "head.safetensors").read_bytes()).hexdigest()  # consistent digest, bad content
    (m / "headstart.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="head.safetensors"):
        Classifier.load(m)
    assert_user_error(run_cli("predict", m, IMAGE, timeout=120), "head.safetensors")


@pytest.mark.slow
def test_serve_refuses_to_start_on_an_invalid_model(model, tmp_path):
    m = copy_model(model, tmp_path / "m")
    meta = json.loads((m / "headstart.json").read_text())
    (m / "headstart.json").write_text(json.dumps({**meta, "temperature": 0}))
    r = run_cli("serve", m, "--port", "0", timeout=120)
    assert_user_error(r, "temperature")


@pytest.mark.slow
def test_a_deeply_nested_or_huge_headstart_json_is_one_error_line(model, tmp_path):
    m = copy_model(model, tmp_path / "nested")
    nested = '{"format": "headstart-model", "format_version": 1, "x": ' + "[" * 200_000 \
        + "]" * 200_000 + "}"  # 400 KB, under the size limit; once a RecursionError
    (m / "headstart.json").write_text(nested)
    for args in (("predict", m, IMAGE), ("evaluate", m, EXAMPLES / "test"),
                 ("serve", m, "--port", "0")):
        assert_user_error(run_cli(*args, timeout=120), "nested more than 32 levels")
    big = copy_model(model, tmp_path / "big")
    meta = json.loads((big / "headstart.json").read_text())
    meta["summary"]["padding"] = "x" * (30 << 20)
    (big / "headstart.json").write_text(json.dumps(meta))
    assert_user_error(run_cli("predict", big, IMAGE, timeout=120),
                      "file too large (30.0 MiB > 16.0 MiB)")


@pytest.mark.slow
def test_a_model_without_digests_says_so_in_one_warning_line():
    r = run_cli("predict", FIXTURE, IMAGE, timeout=120)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "unverified" in warnings[0], r.stderr


@pytest.mark.slow
def test_interrupted_swap_is_undone_on_the_next_run(model, tmp_path):
    """A crash between moving the old model aside and moving the new one in (the fallback
    where renameat2 is unavailable) leaves only the hidden copy; the next run puts it back.
    Temporary folders of killed saves are cleaned too."""
    aside = copy_model(model, tmp_path / ".m.old-999999999-abc")
    stale = tmp_path / ".m.tmp-999999999-xyz"
    stale.mkdir()
    (stale / "backbone.safetensors").write_bytes(b"half written")
    r = run_cli("predict", tmp_path / "m", IMAGE, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["label"] in ("elephant", "giraffe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert not aside.exists() and is_model_dir(tmp_path / "m")


def test_atomic_folder_replaces_without_a_gap_and_fails_cleanly(tmp_path):
    target = tmp_path / "t"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_folder(target) as tmp:
        assert (target / "a").read_text() == "1"  # the old folder is there until the swap
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a").write_text("3")
            raise RuntimeError("crash")
    assert (target / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    assert not recover_folder(target, lambda p: True)


@pytest.mark.slow
def test_digests_are_recorded_and_checked(model):
    meta = read_meta(model)
    assert {"backbone.safetensors", "head.safetensors", "ood.safetensors"} <= set(meta["files"])
    assert all(len(d) == 64 for d in meta["files"].values())


@pytest.mark.slow
def test_unrecorded_file_is_refused(model, tmp_path):
    m = copy_model(model, tmp_path / "m")
    shutil.copy(m / "hashes.safetensors", m / "ood.safetensors.bak")
    meta = json.loads((m / "headstart.json").read_text())
    del meta["files"]["ood.safetensors"]
    (m / "headstart.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="ood.safetensors was not written with this model"):
        Classifier.load(m)


@pytest.mark.slow
def test_model_files_are_never_pickle(model):
    for f in model.iterdir():
        assert not f.read_bytes().startswith(b"\x80")


@pytest.mark.slow
def test_train_with_a_class_of_only_unreadable_files_ignores_it(tmp_path):
    data = copy_images(tmp_path / "d", 5)
    (data / "zebra").mkdir()
    (data / "zebra" / "a.jpg").write_bytes(b"\xff\xd8\xff broken")
    (data / "zebra" / "b.jpg").write_text("<html></html>")
    r = run_cli("train", data, "--out", tmp_path / "m", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["classes"] == ["elephant", "giraffe"]
    assert any("class 'zebra' ignored" in s["reason"] for s in out["skipped"])
    assert is_model_dir(tmp_path / "m")


SAVE_FOREVER = """
import sys
from headstart import Classifier
clf = Classifier.load(sys.argv[1])
clf.backbone_.model  # build it once
print("ready", flush=True)
while True:
    clf.save(sys.argv[2])
"""


@pytest.mark.slow
def test_kill_9_during_saves_never_breaks_the_model(tmp_path):
    """A process saving a model over and over is killed at random moments: the folder is
    always a complete model whose every digest matches, and the next save cleans up."""
    target = tmp_path / "m"
    rng = random.Random(0)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(FIXTURE), str(target)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            deadline = time.time() + 60
            while not target.exists() and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            p.kill()
            p.wait(30)
        clf = Classifier.load(target)  # complete, digests intact
        assert clf.classes_ == ["elephant", "giraffe"]
    Classifier.load(FIXTURE).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
