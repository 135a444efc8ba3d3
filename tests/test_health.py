"""Data health: unusable files, duplicates, leakage, balance and folder problems, found on
real images with the real backbone, through the Python API and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from headstart.fit.health import check

from .conftest import EXAMPLES, copy_digits, copy_images, make_bad_corpus, shared


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headstart", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


@pytest.mark.slow
def test_bad_corpus_every_file_named_good_ones_used(tmp_path):
    unusable, good = make_bad_corpus(tmp_path / "d")
    r = _cli("check", tmp_path / "d", "--json")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    h = json.loads(r.stdout)
    found = {_rel(u["path"], tmp_path / "d"): u["reason"] for u in h["unusable"]}
    assert set(found) == set(unusable), found
    for rel, fragment in unusable.items():
        assert fragment in found[rel], (rel, found[rel])
    assert h["counts"] == {"train": good}
    notes = {_rel(n["path"], tmp_path / "d"): n["note"] for n in h["notes"]}
    assert "first is used" in notes["giraffe/anim.gif"]
    assert "tiny image (20x24" in notes["elephant/tiny.png"]
    assert notes["elephant/.DS_Store"] == "hidden file, ignored"
    assert [(_rel(f["path"], tmp_path / "d"), f["problem"]) for f in h["folders"]] == [
        ("giraffe/loop", "symbolic link loop, ignored")]
    # training goes on with the good images and names the bad ones
    r = _cli("train", tmp_path / "d", "--out", tmp_path / "m", "--json", "--head", "linear")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert out["train_counts"] == good
    skipped = {_rel(s["path"], tmp_path / "d") for s in out["skipped"]}
    assert set(unusable) <= skipped


def test_exit_codes_are_as_documented(tmp_path):
    copy_images(tmp_path / "clean", 5)
    r = _cli("check", tmp_path / "clean", "--no-near")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no problems found" in r.stdout
    r = _cli("check", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.startswith("error:")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_hymenoptera_acceptance(tmp_path):
    """5 training images copied into val, 2 truncated JPEGs, 1 text file named .jpg and an
    empty class folder: exactly those are reported; train succeeds and warns of leakage."""
    data = tmp_path / "h"
    shutil.copytree(shared("hymenoptera"), data)
    clean = check(data)
    assert clean.problems() == 0, clean.to_dict()
    leaked = []
    for cls, n in (("ants", 3), ("bees", 2)):
        for f in sorted((data / "train" / cls).iterdir())[:n]:
            shutil.copy(f, data / "val" / cls / f.name)
            leaked.append(f"val/{cls}/{f.name}")
    for rel in ("train/ants/cut1.jpg", "val/bees/cut2.jpg"):
        src = sorted((data / rel).parent.iterdir())[10].read_bytes()
        (data / rel).write_bytes(src[: len(src) // 2])
    (data / "train" / "bees" / "readme.jpg").write_text("these are bees\n")
    (data / "train" / "wasps").mkdir()
    h = check(data)
    assert sorted(_rel(m["path"], data) for g in h.leakage for m in g["members"]
                  if m["split"] == "val") == sorted(leaked)
    assert h.leaked_images == 5 and all(g["kind"] == "exact" for g in h.leakage)
    assert {_rel(u["path"], data): u["reason"].split(":")[0] for u in h.unusable} == {
        "train/ants/cut1.jpg": "cannot decode", "val/bees/cut2.jpg": "cannot decode",
        "train/bees/readme.jpg": "not an image"}
    assert [(_rel(f["path"], data), f["problem"]) for f in h.folders] == [
        ("train/wasps", "empty class folder (no images), class ignored")]
    assert not h.conflicts and not h.duplicates and not h.balance["small_classes"]
    assert h.summary().startswith("LEAKAGE: 5 held-out image(s)")
    r = _cli("train", data, "--out", tmp_path / "m", "--head", "linear")
    assert r.returncode == 0, r.stderr
    assert "LEAKAGE: 5 held-out image(s)" in r.stderr
    report = (tmp_path / "m" / "report.html").read_text()
    assert 'id="health"' in report and "Leakage:" in report


def test_near_duplicates_within_and_across_classes(tmp_path):
    data = copy_images(tmp_path / "d", 8)
    ele = sorted((data / "elephant").iterdir())
    gir = sorted((data / "giraffe").iterdir())
    img = Image.open(ele[0]).convert("RGB")
    img.save(data / "elephant" / "again.jpg", quality=60)            # recompressed
    ImageOps.mirror(Image.open(gir[0]).convert("RGB")).resize((200, 200)).save(
        data / "elephant" / "mirrored-giraffe.jpg", quality=85)      # filed under 2 classes
    h = check(data)
    assert h.near["searched"], h.near
    dup = [sorted(Path(m["path"]).name for m in g["members"]) for g in h.duplicates]
    conflicts = [sorted(Path(m["path"]).name for m in g["members"]) for g in h.conflicts]
    assert dup == [sorted(["again.jpg", ele[0].name])]
    assert conflicts == [sorted(["mirrored-giraffe.jpg", gir[0].name])]
    assert h.conflicts[0]["kind"] == "near" and h.conflicts[0]["labels_differ"]
    assert not h.leakage and not h.unusable


def test_near_search_does_not_flag_look_alike_digits(tmp_path):
    h = check(copy_digits(tmp_path / "d", train=30, val=10))
    assert not h.duplicates and not h.conflicts and not h.leakage
    assert any("tiny images" in n["note"] for n in h.notes)


def test_exact_duplicates_and_balance_without_features(tmp_path):
    data = copy_images(tmp_path / "d", 6)
    f = sorted((data / "giraffe").iterdir())[0]
    shutil.copy(f, data / "elephant" / "which-one.jpg")
    shutil.copy(f, data / "giraffe" / "copy.jpg")
    (data / "zebra").mkdir()
    for g in sorted((EXAMPLES / "test" / "giraffe").iterdir())[:2]:
        shutil.copy(g, data / "zebra" / g.name)
    h = check(data, near=False)
    assert h.near["searched"] is False
    assert [sorted(Path(m["path"]).name for m in g["members"]) for g in h.conflicts] == [
        sorted([f.name, "copy.jpg", "which-one.jpg"])]
    assert h.balance["small_classes"] == [{"class": "zebra", "images": 2}]
    assert h.balance["imbalance_ratio"] == pytest.approx(7 / 2)
    assert h.exit_code == 3


def test_folder_problems(tmp_path):
    data = copy_images(tmp_path / "d" / "train", 5)
    copy_images(tmp_path / "d" / "val", 2)
    shutil.rmtree(tmp_path / "d" / "val" / "giraffe")
    (tmp_path / "d" / "train" / "Giraffe ").mkdir()
    shutil.copy(sorted((EXAMPLES / "test" / "giraffe").iterdir())[0],
                tmp_path / "d" / "train" / "Giraffe " / "g.jpg")
    (data / "elephant" / "more").mkdir()
    shutil.copy(sorted((EXAMPLES / "test" / "elephant").iterdir())[0],
                data / "elephant" / "more" / "e.jpg")
    h = check(tmp_path / "d", near=False)
    problems = " | ".join(f["problem"] for f in h.folders)
    assert "nested folders ['more']" in problems
    assert "differ only by case, spaces or underscores" in problems
    assert h.balance["missing_from_split"] == {"val": ["Giraffe ", "giraffe"]}
    assert h.counts["train"]["elephant"] == 6


@pytest.mark.slow
def test_evaluate_flags_test_images_the_model_was_trained_on(trained, tmp_path):
    from headstart import Classifier
    from headstart.insight.evaluate import evaluate

    _, model_dir = trained
    clf = Classifier.load(model_dir)
    data = copy_images(tmp_path / "t", 6, split="test")
    seen = sorted((EXAMPLES / "train" / "giraffe").iterdir())
    shutil.copy(seen[2], data / "giraffe" / "seen-before.jpg")
    img = Image.open(seen[5]).convert("RGB")
    img.resize((img.width * 9 // 10, img.height * 9 // 10)).save(
        data / "giraffe" / "resized-copy.jpg", quality=90)
    h = evaluate(clf, data)["health"]
    assert h["leaked_images"] == 2
    kinds = {Path(g["members"][0]["path"]).name: g["kind"] for g in h["leakage"]}
    assert kinds == {"seen-before.jpg": "exact", "resized-copy.jpg": "near"}
    assert h["summary"].startswith("LEAKAGE: 2 held-out image(s)")


@pytest.mark.slow
def test_evaluate_finds_leakage_with_a_tapped_backbone_too(tmp_path):
    """A few-shot steel model reads tapped features (far from ImageNet); its leakage
    check still compares unit rows of final features, so the same pixels in other bytes
    (a lossless re-save) are found near, a copy exact, and no other test image is flagged
    (JPEG-like edits of these noisy surfaces already fall under the threshold)."""
    from headstart import Classifier
    from headstart.insight.evaluate import evaluate

    from .conftest import shared

    classes = ("red_iron", "slag_inclusion", "surface_scratch")
    for split, files in (("train", slice(0, 8)), ("test", slice(40, 46))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for f in sorted(shared("steel_defects", c).iterdir())[files]:
                shutil.copy(f, tmp_path / split / c / f.name)
    clf = Classifier().fit(tmp_path / "train")
    assert clf.backbone_.taps and clf.summary_.domain_gap.level == "far"
    seen = sorted((tmp_path / "train" / "red_iron").iterdir())
    shutil.copy(seen[2], tmp_path / "test" / "red_iron" / "seen-before.jpg")
    Image.open(seen[5]).convert("RGB").save(tmp_path / "test" / "red_iron" / "resaved.png")
    h = evaluate(clf, tmp_path / "test")["health"]
    kinds = {Path(g["members"][0]["path"]).name: g["kind"] for g in h["leakage"]}
    assert kinds == {"seen-before.jpg": "exact", "resaved.png": "near"}


def test_the_review_set_aside_folder_is_not_a_class_folder(tmp_path):
    """`_set_aside/<class>/` (written by review --apply and the studio) is never read as
    data, so it is not a class with "nested folders" either."""
    from headstart.fit.health import folder_problems

    data = copy_images(tmp_path / "data", per_class=2)
    aside = data / "_set_aside" / "giraffe"
    aside.mkdir(parents=True)
    shutil.copy(next((data / "giraffe").iterdir()), aside / "x.jpg")
    assert folder_problems(data) == []
    (data / "elephant" / "nested").mkdir()
    assert [p["problem"][:14] for p in folder_problems(data)] == ["nested folders"]
