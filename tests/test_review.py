from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from headstart.data import load_dataset
from headstart.errors import DataError
from headstart.review import apply, review, undo, write_suggestions

from .conftest import EXAMPLES, assert_user_error, launch_chromium, run_cli, shared


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, files with the hash of their bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def hymenoptera_copies(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """A clean copy of hymenoptera, and one with 10% of its training labels flipped
    (seeded), with the flipped files' new paths."""
    tmp = tmp_path_factory.mktemp("review")
    clean, flipped = tmp / "clean", tmp / "flipped"
    shutil.copytree(shared("hymenoptera"), clean)
    shutil.copytree(shared("hymenoptera"), flipped)
    files = sorted((flipped / "train").rglob("*.*"))
    moved = set()
    for f in random.Random(0).sample(files, round(0.1 * len(files))):
        dest = f.parent.parent / ("bees" if f.parent.name == "ants" else "ants") / f.name
        os.replace(f, dest)
        moved.add(str(dest))
    return clean, flipped, moved


def test_review_finds_flipped_labels_and_little_on_clean_data(hymenoptera_copies):
    clean, flipped, moved = hymenoptera_copies
    r = review(clean)
    assert r.images == 398 and r.oof_accuracy > 0.93
    assert len(r.suggestions) < 0.03 * r.images  # measured: 6 (1 label, 5 outliers)
    assert any(s.path.endswith("imageNotFound.gif") for s in r.suggestions)  # a placeholder
    r = review(flipped)
    top = {x.path for x in r.ranking[:2 * len(moved)]}
    assert len(top & moved) >= 0.7 * len(moved)  # measured: 24 of 24
    labels = [s for s in r.suggestions if s.kind == "label"]
    found = {s.path for s in labels} & moved
    assert len(found) >= 0.6 * len(moved)  # measured: 16 of 24
    assert len(found) >= 0.8 * len(labels)  # and the suggestions are mostly right
    for s in labels:
        if s.path in found:  # the suggested class is where the image came from
            assert s.suggested != s.label and s.probability > 0.5


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_apply_then_undo_restores_the_folder_byte_for_byte(tmp_path):
    data = tmp_path / "safari"
    shutil.copytree(EXAMPLES / "train", data)
    before = tree(data)
    ele = sorted((data / "elephant").iterdir())
    rows = [{"action": "move", "path": str(ele[0]), "label": "elephant",
             "suggested": "giraffe"},
            {"action": "set_aside", "path": str(ele[1]), "label": "elephant",
             "suggested": ""},
            {"action": "keep", "path": str(ele[2]), "label": "elephant", "suggested": ""}]
    log, moved = apply(_write(tmp_path / "s.csv", rows), data)
    assert moved == 2 and log.is_file() and log.parent == data
    assert (data / "giraffe" / ele[0].name).is_file() and not ele[0].exists()
    assert (data / "_set_aside" / "elephant" / ele[1].name).is_file()
    assert ele[2].is_file()
    ds = load_dataset(data)  # the set-aside folder and the log are not data
    assert ds.train.classes == ["elephant", "giraffe"]
    assert len(ds.train.paths) == len([k for k, v in before.items() if v != "dir"]) - 1
    assert undo(log, data) == 2
    assert tree(data) == before


def test_apply_checks_every_row_first_and_moves_nothing_on_a_bad_one(tmp_path):
    data = tmp_path / "safari"
    shutil.copytree(EXAMPLES / "train", data)
    ele = sorted((data / "elephant").iterdir())
    gir = sorted((data / "giraffe").iterdir())
    shutil.copy(ele[1], data / "giraffe" / ele[1].name)  # the destination is taken
    before = tree(data)
    bad = [{"action": "move", "path": str(ele[0]), "label": "elephant",
            "suggested": "giraffe"},
           {"action": "move", "path": str(ele[1]), "label": "elephant",
            "suggested": "giraffe"},
           {"action": "move", "path": str(gir[0]), "label": "giraffe", "suggested": "zebra"},
           {"action": "delete", "path": str(gir[1]), "label": "giraffe", "suggested": ""},
           {"action": "set_aside", "path": str(sorted((EXAMPLES / "test" / "giraffe")
                                                       .iterdir())[0]),
            "label": "giraffe", "suggested": ""}]
    with pytest.raises(DataError) as e:
        apply(_write(tmp_path / "s.csv", bad), data)
    text = str(e.value)
    assert "nothing was moved" in text and "already exists" in text and "zebra" in text
    assert "action: expected one of move, set_aside, keep, got 'delete'" in text
    assert "is not inside" in text
    assert tree(data) == before
    assert_user_error(run_cli("review", data, "--apply", tmp_path / "s.csv"),
                      "nothing was moved")
    assert tree(data) == before


def test_review_cli_writes_page_csv_and_json(tmp_path):
    from playwright.sync_api import sync_playwright

    data = tmp_path / "safari"
    shutil.copytree(EXAMPLES / "train", data)
    giraffe = sorted((data / "giraffe").iterdir())[0]
    os.replace(giraffe, data / "elephant" / giraffe.name)  # one wrong label
    os.mkfifo(data / "giraffe" / "pipe.jpg")  # never opened, reported
    page, sheet = tmp_path / "review.html", tmp_path / "s.csv"
    r = run_cli("review", data, "--out", page, "--csv", sheet, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["images"] == 20 and len(got["ranking"]) == 20
    assert [s["path"].rsplit("/", 1)[1] for s in got["skipped"]] == ["pipe.jpg"]
    assert "pipe.jpg" in r.stderr and "named pipe" in r.stderr
    assert got["ranking"][0]["path"].endswith(giraffe.name)  # the least probable label
    assert sheet.read_text().splitlines()[0] == \
        "action,path,label,suggested,probability,kind,reason"
    text = page.read_text()
    assert giraffe.name in text and "http" not in text
    with sync_playwright() as p:
        browser = launch_chromium(p)
        tab = browser.new_page()
        failed: list[str] = []
        tab.on("requestfailed", lambda req: failed.append(req.url))
        tab.goto(page.as_uri())
        for section in ("label", "duplicate", "outlier", "look"):
            assert tab.locator(f"#{section}").is_visible(), section
        imgs = tab.locator("figure img")
        assert imgs.count() >= 1
        assert all(imgs.nth(i).evaluate("e => e.complete && e.naturalWidth > 10")
                   for i in range(imgs.count()))
        assert tab.locator(f'figure[title$="{giraffe.name}"]').count() == 1
        browser.close()
    assert not failed
    r = run_cli("review", data)
    assert r.returncode == 0 and "suggestion(s)" in r.stdout


def test_write_suggestions_round_trips_through_apply(tmp_path, hymenoptera_copies):
    _, flipped, moved = hymenoptera_copies
    data = tmp_path / "flipped"
    shutil.copytree(flipped, data)
    r = review(data)
    before = tree(data)
    sheet = write_suggestions(r, tmp_path / "s.csv")
    rows = _rows(sheet)
    assert {row["action"] for row in rows} <= {"move", "keep"}
    n = sum(row["action"] == "move" for row in rows)
    log, moved_n = apply(sheet, data)
    assert moved_n == n > 0
    relocated = {str(data / Path(m["to"])) for m in json.loads(log.read_text())["moves"]}
    assert len(relocated) == n
    assert undo(log, data) == n and tree(data) == before


def test_evaluate_reviews_the_test_labels(trained, tmp_path):
    _, model = trained
    data = tmp_path / "test"
    shutil.copytree(EXAMPLES / "test", data)
    giraffe = sorted((data / "giraffe").iterdir())[0]
    os.replace(giraffe, data / "elephant" / giraffe.name)  # a wrong test label
    page = tmp_path / "review.html"
    r = run_cli("evaluate", model, data, "--review", page, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["review"]["page"] == str(page) and m["review"]["suggestions"] >= 1
    text = page.read_text()
    label = text[text.index('id="label"'):text.index('id="duplicate"')]
    assert giraffe.name in label  # suggested for giraffe, from the model's own predictions
