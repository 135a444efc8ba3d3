from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from headstart.io.dataset import load_dataset
from headstart.errors import DataError
from headstart.insight.review import apply, review, undo, write_suggestions

from .conftest import EXAMPLES, assert_user_error, launch_chromium, run_cli, shared, tree


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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.browser
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.fixture()
def attacked(tmp_path) -> tuple[Path, Path]:
    """``tmp/data`` (safari class folders, plus ``zebra``: a class folder that is a link to
    ``tmp/outside``) and ``tmp/outside`` (a decoy with a photo of its own)."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    shutil.copytree(EXAMPLES / "train", data)
    outside.mkdir()
    shutil.copy(sorted((EXAMPLES / "test" / "giraffe").iterdir())[0], outside / "o.jpg")
    os.symlink(outside, data / "zebra")
    return data, outside


def test_apply_never_moves_a_file_out_of_data(attacked, tmp_path):
    data, outside = attacked
    ele = sorted((data / "elephant").iterdir())
    bad = [("move", ele[0], "../outside"),          # 2: a class above DATA
           ("move", ele[1], str(outside)),          # 3: an absolute path
           ("move", ele[2], "zebra"),               # 4: a class folder linked elsewhere
           ("set_aside", outside / "o.jpg", ""),    # 5: an image outside DATA
           ("move", data / "giraffe", "elephant"),  # 6: a class folder, not an image
           ("move", ele[3], "."),                   # 7: DATA's own folder
           ("move", ele[4], "_set_aside")]          # 8: not a class
    rows = [{"action": a, "path": str(p), "label": "elephant", "suggested": s}
            for a, p, s in bad]
    sheet = _write(tmp_path / "s.csv", rows)
    before = tree(tmp_path)
    r = run_cli("review", data, "--apply", sheet, timeout=120)
    assert_user_error(r, "nothing was moved: 7 row(s)")
    for n, needle in [(2, "'../outside'"), (3, repr(str(outside))), (4, "zebra"),
                      (5, "is not inside"), (6, "is a folder"), (7, "'.'"),
                      (8, "'_set_aside'")]:
        line = r.stderr[r.stderr.index(f"line {n}:"):].split("; line ")[0]
        assert needle in line, (n, line)
    assert tree(tmp_path) == before  # byte for byte, inside and out


def _log_after_apply(data: Path, tmp_path: Path) -> Path:
    ele = sorted((data / "elephant").iterdir())
    rows = [{"action": "move", "path": str(ele[0]), "suggested": "giraffe"},
            {"action": "set_aside", "path": str(ele[1]), "suggested": ""}]
    r = run_cli("review", data, "--apply", _write(tmp_path / "s.csv", rows), "--json")
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["log"])


@pytest.mark.slow
def test_undo_checks_the_whole_log_against_data_before_moving_anything(attacked, tmp_path):
    data, outside = attacked
    log = _log_after_apply(data, tmp_path)
    record = json.loads(log.read_text())
    giraffe = record["moves"][0]["to"]
    tampered = {
        "another folder": ({**record, "data": str(outside)}, "was written for"),
        "from above": ({**record, "moves": [{"from": "../outside/back.jpg", "to": giraffe}]},
                       "is not inside"),
        "absolute to": ({**record, "moves": [{"from": "elephant/new.jpg",
                                              "to": str(outside / "o.jpg")}]},
                        "absolute paths"),
        "moves not a list": ({**record, "moves": "abc"}, "not a headstart review log"),
        "entry without from": ({**record, "moves": [{"to": giraffe}]},
                               "not a headstart review log"),
        "created above": ({**record, "moves": [], "created": ["../outside"]}, None),
    }
    def snapshot() -> tuple[dict[str, str], dict[str, str]]:
        return tree(data), tree(outside)
    before = snapshot()
    for name, (content, needle) in tampered.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(content))
        r = run_cli("review", data, "--undo", bad, timeout=120)
        if needle is None:  # nothing to move; the folder above is never removed
            assert r.returncode == 0, r.stderr
            assert outside.is_dir() and not bad.exists()
            continue
        assert_user_error(r, needle)
        assert snapshot() == before, name  # byte for byte, inside and out
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(run_cli("review", data, "--undo", deep), "nested more than")
    # the real log, with the DATA of another folder: refused; with its own: undone
    assert_user_error(run_cli("review", outside, "--undo", log), "was written for")
    r = run_cli("review", data, "--undo", log, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"restored": 2}, r.stderr
    assert not log.exists()
    assert (data / "elephant").is_dir() and len(list((data / "elephant").iterdir())) == 10


@pytest.mark.slow
def test_a_photo_under_two_classes_is_one_suggestion_that_applies(tmp_path):
    """The copy filed under the wrong class is set aside (its twin stays in the right one):
    one CSV row for the pair, never a "move" onto the existing copy, and --apply works."""
    data = tmp_path / "safari"
    shutil.copytree(EXAMPLES / "train", data)
    twin = sorted((data / "giraffe").iterdir())[2]
    shutil.copy(twin, data / "elephant" / twin.name)
    sheet = tmp_path / "s.csv"
    r = run_cli("review", data, "--report", tmp_path / "page.html", "--csv", sheet)
    assert r.returncode == 0, r.stderr
    rows = [row for row in csv.DictReader(sheet.open()) if twin.name in row["path"]]
    assert len(rows) == 1, rows
    assert rows[0]["action"] == "set_aside" and rows[0]["label"] == "elephant"
    assert "the copy in giraffe stays" in rows[0]["reason"]
    assert (tmp_path / "page.html").is_file()
    r = run_cli("review", data, "--apply", sheet)
    assert r.returncode == 0, r.stderr
    assert (data / "giraffe" / twin.name).is_file()
    assert not (data / "elephant" / twin.name).exists()
    assert (data / "_set_aside" / "elephant" / twin.name).is_file()
