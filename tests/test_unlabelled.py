"""A few labels and a pile of unlabelled photos: ``train --unlabelled`` and ``suggest``, on
real images of the shared sets, through the CLI as a user runs it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import HeadstartError

from .conftest import assert_user_error, run_cli, shared, strange_files

STEEL = ("finishing_roll_printing", "iron_sheet_ash", "red_iron", "surface_scratch")


def _steel(tmp_path: Path, labelled: int = 5, pile: int = 30, test: int = 25
           ) -> tuple[Path, Path, list[tuple[str, str]]]:
    """Labelled steel images (``labelled`` per class), a pile of others whose folders are
    named after the wrong classes (never read as labels), and test images."""
    lab, heap, held = tmp_path / "lab", tmp_path / "pile", []
    for i, c in enumerate(STEEL):
        files = sorted(shared("steel_defects", c).iterdir())
        (lab / c).mkdir(parents=True)
        for f in files[:labelled]:
            shutil.copy(f, lab / c / f.name)
        wrong = heap / "day 1" / STEEL[(i + 1) % len(STEEL)]  # a misleading folder name
        wrong.mkdir(parents=True, exist_ok=True)
        for f in files[labelled:labelled + pile]:
            shutil.copy(f, wrong / f"{c[:2]}-{f.name}")
        held += [(str(f), c) for f in files[-test:]]
    return lab, heap, held


def _accuracy(model: Path, held: list[tuple[str, str]]) -> float:
    r = run_cli("predict", model, *[p for p, _ in held], "--json", "--no-unknown")
    assert r.returncode == 0, r.stderr
    got = {p["path"]: p["label"] for p in json.loads(r.stdout)["predictions"]}
    return float(np.mean([got[p] == c for p, c in held]))


@pytest.mark.slow
def test_train_with_a_pile_learns_from_it_and_reads_it_like_any_input(tmp_path):
    """The pile (nested folders with misleading names, a broken file, a FIFO, a device, a
    duplicate) is read like any input; the head trained with it is kept, no worse on test
    images than without it, and the record says how many images were used and how."""
    lab, heap, held = _steel(tmp_path)
    junk = heap / "day 1" / "junk"
    junk.mkdir()
    (junk / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    strange = strange_files(junk)
    first = next((heap / "day 1" / STEEL[1]).iterdir())
    shutil.copy(first, junk / "copy.jpg")
    r = run_cli("train", lab, "--out", tmp_path / "without", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    r = run_cli("train", lab, "--out", tmp_path / "with", "--unlabelled", heap, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "unlabelled  121 read, 3 skipped" in r.stdout, r.stdout
    assert "broken.jpg" in r.stderr and "named pipe" in r.stderr
    p = json.loads((tmp_path / "with" / "headstart.json").read_text())["summary"][
        "unlabelled"]
    assert p["images"] == 4 * 30 + 1 and p["skipped"] == 1 + len(strange), p
    assert p["kept"] and p["used"] > 0 and p["method"] == "agree", p
    assert p["cv_with"] >= p["cv_without"], p
    assert _accuracy(tmp_path / "with", held) >= _accuracy(tmp_path / "without", held)


@pytest.mark.slow
def test_a_pile_from_another_domain_is_ignored(tmp_path):
    """Digits as the pile of a safari model: unlike the labelled photos, so ignored, and
    the model is the one trained without it (same answers on test photos)."""
    lab = tmp_path / "lab"
    heap = tmp_path / "pile"
    for c in ("elephant", "giraffe"):
        (lab / c).mkdir(parents=True)
        for f in sorted(shared("safari", c).iterdir())[:5]:
            shutil.copy(f, lab / c / f.name)
    heap.mkdir()
    for d in ("3", "5", "8"):
        for f in sorted(shared("digits", "val", d).iterdir())[:20]:
            shutil.copy(f, heap / f"{d}-{f.name}")
    test = [str(f) for c in ("elephant", "giraffe")
            for f in sorted(shared("safari", c).iterdir())[100:115]]
    for name, extra in (("without", []), ("with", ["--unlabelled", str(heap)])):
        r = run_cli("train", lab, "--out", tmp_path / name, "--json", *extra)
        assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["unlabelled"]
    assert not p["kept"] and p["unlike"] >= 50 and "another domain" in p["reason"], p
    answers = []
    for name in ("without", "with"):
        r = run_cli("predict", tmp_path / name, *test, "--json")
        answers.append([(x["label"], round(x["probability"], 6))
                        for x in json.loads(r.stdout)["predictions"]])
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_suggest_picks_spread_out_images_collapses_copies_and_lists_strangers(tmp_path):
    lab, heap, _ = _steel(tmp_path, pile=20)
    r = run_cli("train", lab, "--out", tmp_path / "m", "--json")
    assert r.returncode == 0, r.stderr
    some = sorted((heap / "day 1" / STEEL[0]).iterdir())[0]
    for i in range(3):  # the same image three times: at most one of them is suggested
        shutil.copy(some, heap / f"copy-{i}.jpg")
    for f in sorted(shared("safari", "giraffe").iterdir())[:3]:  # not steel at all
        shutil.copy(f, heap / f"stranger-{f.name}")
    strange_files(heap)
    r = run_cli("suggest", tmp_path / "m", heap, "--n", "8", "--json", "--csv",
                tmp_path / "s.csv", timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    nxt = s["label_next"]
    assert len(nxt) == 8 and len({x["path"] for x in nxt}) == 8
    copies = [x for x in nxt if Path(x["path"]).name.startswith(("copy-", some.name))]
    assert len(copies) <= 1
    assert all(x["guess"] in STEEL and 0 < x["probability"] <= 1 for x in nxt)
    assert {Path(x["path"]).name for x in s["unlike"]} >= {
        f"stranger-{f.name}" for f in sorted(shared("safari", "giraffe").iterdir())[:3]}
    assert not any(Path(x["path"]).name.startswith("stranger") for x in nxt)
    assert s["images"] == 4 * 20 + 3 + 3 and len(s["skipped"]) == 2
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["path"] for r in rows if r["kind"] == "label_next"] == [x["path"] for x in nxt]
    human = run_cli("suggest", tmp_path / "m", heap, "--n", "3")
    assert human.returncode == 0 and "label these 3 next" in human.stdout, human.stderr


@pytest.mark.slow
def test_one_labelled_image_per_class_learns_from_the_pile_unmeasured(tmp_path):
    """With one labelled image per class nothing can be cross-checked: the pile is used,
    and accuracy and calibration stay unmeasured, as without it (the head's own
    cross-validation over pile labels drawn from those images is no measure)."""
    lab, heap, held = _steel(tmp_path, labelled=1)
    r = run_cli("train", lab, "--out", tmp_path / "m", "--unlabelled", heap, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["unlabelled"]["kept"] and s["unlabelled"]["used"] > 0, s["unlabelled"]
    assert s["unlabelled"]["cv_with"] is None and s["val_images"] == 0
    assert s["calibration"]["temperature"] == 1.0
    assert _accuracy(tmp_path / "m", held) > 0.5  # 4 classes: far above chance


def test_suggest_and_unlabelled_refuse_bad_arguments(tmp_path):
    from headstart import Classifier
    from headstart.fit.unlabelled import UnlabelledConfig

    with pytest.raises(HeadstartError, match="unlabelled"):
        Classifier(from_scratch=True).fit(tmp_path, unlabelled=tmp_path)
    with pytest.raises(HeadstartError, match="method"):
        UnlabelledConfig(method="magic")
    r = run_cli("suggest", tmp_path / "no-model", tmp_path, timeout=60)
    assert_user_error(r)
    r = run_cli("suggest", tmp_path, tmp_path, "--n", "0", timeout=60)
    assert r.returncode == 2
