"""The CLI as a user runs it: a real subprocess, real images, real exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import (EXAMPLES, assert_user_error, copy_images, invoke_cli, run_cli,
                       strange_files)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    r = run("train", EXAMPLES / "train", "--out", out, "--head", "linear", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["classes"] == ["elephant", "giraffe"] and s["head"] == "linear"
    assert 0.0 <= s["val_accuracy"] <= 1.0 and s["out"] == str(out)
    return out


@pytest.mark.slow
def test_train_human_output_and_corrupt_file_skipped(tmp_path):
    data = copy_images(tmp_path / "d", 5)
    (data / "giraffe" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run("train", data, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "corrupt.jpg" in r.stderr and "cannot decode" in r.stderr
    assert "validation  accuracy" in r.stdout and "giraffe 5" in r.stdout
    assert (tmp_path / "m" / "headstart.json").is_file()


@pytest.mark.slow
def test_predict_json_csv_and_counts(model_dir, tmp_path):
    folder = EXAMPLES / "test"
    r = run("predict", model_dir, folder, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["predictions"]) == 30 and sum(out["counts"].values()) == 30
    right = sum(Path(p["path"]).parent.name == p["label"] for p in out["predictions"])
    assert right >= 27
    for p in out["predictions"]:
        assert p["probability"] == max(p["probabilities"].values())
    r = run("predict", model_dir, folder, "--json", "--csv", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    streamed = json.loads(r.stdout)
    assert streamed["written"] == 30 and streamed["counts"] == out["counts"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["label"] for r in rows] == [p["label"] for p in out["predictions"]]
    assert [float(r["probability"]) for r in rows] == pytest.approx(
        [p["probability"] for p in out["predictions"]], abs=1e-5)
    human = run("predict", model_dir, next((folder / "giraffe").iterdir()))
    assert human.returncode == 0 and "counts" in human.stdout


@pytest.mark.slow
def test_evaluate_json_has_accuracy(model_dir):
    r = run("evaluate", model_dir, EXAMPLES / "test", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["n_images"] == 30 and m["accuracy"] >= 0.9
    human = run("evaluate", model_dir, EXAMPLES / "test")
    assert human.stdout.startswith("accuracy") and "precision" in human.stdout


@pytest.mark.slow
def test_bad_paths_are_one_line_errors(model_dir, tmp_path):
    assert_user_error(invoke_cli("train", tmp_path / "nowhere", "--out", tmp_path / "m"),
                      "not found")
    assert_user_error(invoke_cli("predict", tmp_path / "no-model", EXAMPLES),
                      "model directory")
    assert_user_error(invoke_cli("predict", model_dir, tmp_path / "none.jpg"), "not found")
    assert_user_error(invoke_cli("evaluate", model_dir, tmp_path / "none"), "not found")


def test_one_class_data_is_a_user_error(tmp_path):
    data = copy_images(tmp_path / "d", 3)
    shutil.rmtree(data / "elephant")
    assert_user_error(invoke_cli("train", data, "--out", tmp_path / "m"),
                      "at least 2 classes")


def test_unknown_backbone_and_head_are_user_errors(tmp_path):
    data = copy_images(tmp_path / "d", 2)
    assert_user_error(invoke_cli("train", data, "--out", tmp_path / "m", "--backbone",
                                 "resnet5000"), "unknown backbone")
    assert_user_error(invoke_cli("train", data, "--out", tmp_path / "m", "--backbone",
                                 "resnet18"), "--weights FILE")
    assert_user_error(invoke_cli("train", data, "--out", tmp_path / "m", "--head", "svm"),
                      "--head")


def test_backbones_lists_offline_default():
    r = invoke_cli("backbones", "--json")
    assert r.returncode == 0
    rows = {x["name"]: x["status"] for x in json.loads(r.stdout)}
    assert rows["efficientnet_lite0"] == "offline"
    assert "efficientnet_lite0" in invoke_cli("backbones").stdout


@pytest.mark.slow
def test_fifo_and_device_links_never_block_any_command(model_dir, tmp_path):
    """A FIFO named x.jpg and a link to /dev/zero named .jpg, in a class folder, through
    check, train, predict and evaluate: each is skipped with its reason, nothing hangs."""
    data = copy_images(tmp_path / "d", 5)
    expected = strange_files(data / "giraffe")
    for args in (("check", data, "--no-near"), ("check", data, "--json"),
                 ("train", data, "--out", tmp_path / "m"), ("predict", model_dir, data),
                 ("evaluate", model_dir, data)):
        r = run_cli(*args, timeout=240)
        assert r.returncode in (0, 3), (args, r.stderr)
        assert "Traceback" not in r.stderr
        said = r.stdout + r.stderr
        for name, fragment in expected.items():
            assert name in said and fragment in said, (args, said)


@pytest.mark.slow
def test_file_and_class_names_are_never_rich_markup(model_dir, tmp_path):
    data = copy_images(tmp_path / "d", 4)
    (data / "giraffe").rename(data / "[bold]giraffe")
    photo = sorted((data / "elephant").iterdir())[0]
    shutil.copy(photo, data / "elephant" / "holiday [draft].jpg")
    (data / "elephant" / "set[").mkdir()
    shutil.copy(photo, data / "elephant" / "set[" / "b].jpg")  # the path reads set[/b].jpg
    r = run("predict", model_dir, "holiday [draft].jpg", "set[/b].jpg", cwd=data / "elephant")
    assert r.returncode == 0, r.stderr
    assert "holiday [draft].jpg" in r.stdout and "set[/b].jpg" in r.stdout
    r = run("train", data, "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "[bold]giraffe 4" in r.stdout
    assert_user_error(run("predict", model_dir, tmp_path / "[red]x[/red].jpg"),
                      "[red]x[/red].jpg")
    r = run("backbones")
    lines = r.stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.split()[:1] == ["efficientnet_lite1"])
    row = lines[start] + " ".join(x for x in lines[start + 1:start + 3]  # wrapped cells
                                  if not x[:40].strip())
    assert "[lite1]" in row or "offline" in row  # not installed: the extra to install


@pytest.mark.slow
def test_a_closed_pipe_ends_predict_quietly(model_dir):
    p = subprocess.Popen([sys.executable, "-m", "headstart", "predict", model_dir,
                          EXAMPLES / "test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()  # `| head -1`
    p.stdout.close()
    try:
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 0, err
    finally:
        p.kill()
    assert "Traceback" not in err and "Broken pipe" not in err


def test_check_exit_codes_for_csvs_without_two_classes(small_data, tmp_path):
    (tmp_path / "header.csv").write_text("path,label\n")
    assert_user_error(run("check", tmp_path / "header.csv", "--no-near"), "no rows")
    rows = [f"{p},giraffe" for p in sorted((small_data / "giraffe").iterdir())]
    (tmp_path / "one.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    r = run("check", tmp_path / "one.csv", "--no-near")
    assert r.returncode == 3 and "a classifier needs at least 2" in r.stdout, r.stdout
    (tmp_path / "empty").mkdir()
    assert_user_error(run("check", tmp_path / "empty", "--no-near"), "no images found")


@pytest.mark.slow
def test_file_name_that_is_not_utf8_goes_through_predict_and_csv(model_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    photo = sorted((EXAMPLES / "test" / "giraffe").iterdir())[0]
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"  # a Latin-1 name, invalid UTF-8
    shutil.copy(photo, raw)
    r = run("predict", model_dir, folder, "--csv", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert len(rows) == 2 and rows[1].startswith(raw)  # the name's own bytes, unmangled


def test_library_parameter_names_become_options():
    """Errors carry the parameter as a field; the CLI spells it as the option that sets it,
    read from the command's own declarations (no text is parsed)."""
    from headstart.cli.console import spelling
    from headstart.cli.main import export, serve, train
    from headstart.errors import BackboneError, HeadstartError

    spell = spelling(train)
    e = HeadstartError(param="head", expected="one of auto, linear, mlp", got="svm")
    assert str(e) == "head: expected one of auto, linear, mlp, got 'svm'"
    assert e.describe(spell) == "--head: expected one of auto, linear, mlp, got 'svm'"
    e = BackboneError("pass a local file with {weights} FILE", param="backbone",
                      mentions=("weights",))
    assert e.describe(spell) == "--backbone: pass a local file with --weights FILE"
    assert str(e) == "backbone: pass a local file with weights FILE"
    assert HeadstartError("needs nncf", param="int8").describe(spell) == "--int8: needs nncf"
    assert HeadstartError(param="max_epochs", expected="> 0", got=0).describe(spell) == \
        "--epochs: expected > 0, got 0"
    assert HeadstartError(param="fmt", expected="x").describe(spelling(export)) == \
        "--format: expected x"
    assert HeadstartError(param="body_timeout_s", expected="> 0", got=-1).describe(
        spelling(serve)) == "--body-timeout: expected > 0, got -1"
    # a parameter the command has no option for keeps the library's name; a path in a
    # message is never touched
    assert HeadstartError("data/head=3/x.jpg: file not found", param="val_fraction"
                          ).describe(spell) == "val_fraction: data/head=3/x.jpg: file not found"


def test_python_errors_name_parameters_not_options():
    from headstart import Classifier, HeadstartError

    with pytest.raises(HeadstartError, match="^head: expected one of auto, linear, mlp"):
        Classifier(head="svm").fit(EXAMPLES / "train")
    with pytest.raises(HeadstartError, match="^batch_size: expected an integer >= 1"):
        Classifier(batch_size=0).fit(EXAMPLES / "train")


@pytest.mark.slow
def test_predict_and_train_say_what_the_numbers_mean(trained, tmp_path):
    """"unknown" says why and which class came closest (not a class probability beside the
    word unknown); train prints accuracy as a percentage with a word on it."""
    from .conftest import shared

    _, model_dir = trained
    far = sorted(shared("textures", "bumpy").iterdir())[10]
    giraffe = sorted((EXAMPLES / "test" / "giraffe").iterdir())[0]
    r = run_cli("predict", model_dir, far, giraffe)
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
    unknown = lines[str(far)]
    assert " unknown " in unknown and "unlike the training images" in unknown
    assert "closest class" in unknown and " - " in unknown  # no probability for "unknown"
    assert "%" in lines[str(giraffe)] and "giraffe" in lines[str(giraffe)]
    r = run_cli("train", EXAMPLES / "train", "--out", tmp_path / "m", "--head", "linear")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("validation"))
    assert "%" in line and "held-out images" in line
    assert any(w in line for w in ("very good", "good", "fair", "poor"))


def test_help_shows_flags_without_a_type_and_whole_summaries():
    r = invoke_cli("review", "--help")
    assert "--report" in r.stdout
    assert all("--help" in ln for ln in r.stdout.splitlines() if "<bool>" in ln), r.stdout
    lines = invoke_cli("--help").stdout.splitlines()
    top = " ".join(ln.strip(" │╭╮╰╯─") for ln in lines)
    top = " ".join(top.split())
    for summary in ("Find probable label errors, copies under two classes and outliers; move "
                    "the chosen ones, undoably.",
                    "The whole loop in a local web app: collect, label, check, train, review, "
                    "try, export."):
        assert summary in top, top


def test_int8_without_nncf_is_refused_before_any_work(tmp_path):
    """A missing extra is said in one error line before a single image is read (it used to
    come after "features 37/37")."""
    import time

    code = ("import sys; sys.modules['nncf'] = None; from headstart.cli.main import main; "
            f"sys.argv = ['headstart', 'train', {str(EXAMPLES / 'train')!r}, '--out', "
            f"{str(tmp_path / 'm')!r}, '--int8']; main()")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_user_error(r, "--int8", "pip install 'headstart[int8]'")
    assert "features" not in r.stderr and not (tmp_path / "m").exists()
    assert time.perf_counter() - t < 30


@pytest.mark.slow
def test_heic_and_avif_phone_photos_through_check_train_and_predict(model_dir, tmp_path):
    """Phone photos (HEIC, AVIF, turned by their EXIF orientation) are read like JPEGs by
    check, train and predict."""
    from .test_decode import phone_photo

    data = copy_images(tmp_path / "d", 3)
    phones = []
    for cls in ("elephant", "giraffe"):
        photos = sorted((EXAMPLES / "test" / cls).iterdir())
        phones += [phone_photo(photos[0], data / cls / f"{cls}-phone.heic", "HEIF"),
                   phone_photo(photos[1], data / cls / f"{cls}-phone.avif", "AVIF")]
    r = run("check", data, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["unusable"] == [], r.stdout
    r = run("train", data, "--out", tmp_path / "m", "--head", "linear", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["train_counts"] == {"elephant": 5, "giraffe": 5}
    r = run("predict", model_dir, *phones, "--json")
    assert r.returncode == 0, r.stderr
    got = {Path(p["path"]).name: p["label"] for p in json.loads(r.stdout)["predictions"]}
    assert got == {p.name: p.name.split("-")[0] for p in phones}, got
