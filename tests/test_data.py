from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from headstart.io.dataset import find_images, load_dataset, load_labelled, stratified_split
from headstart.errors import DataError

from .conftest import bounded, copy_images, run_cli, strange_files


def test_class_folder_layout(small_data):
    ds = load_dataset(small_data)
    assert ds.layout == "class folders"
    assert ds.train.classes == ["elephant", "giraffe"]
    assert ds.train.counts() == {"elephant": 6, "giraffe": 6}
    assert ds.val is None


def test_train_val_layout_uses_val_and_keeps_class_order(tmp_path):
    copy_images(tmp_path / "d" / "train", 4)
    copy_images(tmp_path / "d" / "valid", 2, split="test")
    ds = load_dataset(tmp_path / "d")
    assert ds.layout == "train/val"
    assert ds.train.counts() == {"elephant": 4, "giraffe": 4}
    assert ds.val.counts() == {"elephant": 2, "giraffe": 2}


def test_csv_layout_with_relative_paths_and_split(tmp_path):
    copy_images(tmp_path / "imgs", 3)
    rows = ["path,label,split"]
    for i, f in enumerate(sorted((tmp_path / "imgs").rglob("*.jpg"))):
        rows.append(f"imgs/{f.parent.name}/{f.name},{f.parent.name},{'val' if i % 3 == 0 else 'train'}")
    rows.append("imgs/missing.jpg,giraffe,train")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "labels.csv")
    assert ds.layout == "csv"
    assert len(ds.train) + len(ds.val) == 6
    assert [s.reason for s in ds.skipped] == ["file not found"]
    images, _ = load_labelled(tmp_path / "labels.csv", ["elephant", "giraffe"])
    assert len(images) == len(ds.val)


def test_one_class_is_a_clear_error(tmp_path):
    copy_images(tmp_path / "d", 3)
    shutil.rmtree(tmp_path / "d" / "giraffe")
    with pytest.raises(DataError, match="at least 2 classes.*elephant"):
        load_dataset(tmp_path / "d")


def test_empty_class_folder_is_reported_and_ignored(tmp_path):
    copy_images(tmp_path / "d", 3)
    (tmp_path / "d" / "zebra").mkdir()
    (tmp_path / "d" / "lion").mkdir()
    (tmp_path / "d" / "lion" / "notes.txt").write_text("no photos yet")
    ds = load_dataset(tmp_path / "d")
    assert ds.train.classes == ["elephant", "giraffe"]
    assert ds.train.counts() == {"elephant": 3, "giraffe": 3}
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert reasons["zebra"] == "empty class folder (no images), class ignored"
    assert reasons["lion"] == "empty class folder (no images), class ignored"
    assert reasons["notes.txt"] == "not an image type (.txt)"


def test_missing_path_and_unknown_eval_class(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    copy_images(tmp_path / "d", 1)
    with pytest.raises(DataError, match="do not exist in the training classes"):
        load_labelled(tmp_path / "d", ["elephant", "lion"])


def test_non_images_and_loose_files_are_reported(small_data):
    (small_data / "giraffe" / "notes.txt").write_text("hello")
    (small_data / "readme.jpg").write_bytes(b"x")
    (small_data / "giraffe" / ".hidden.jpg").write_bytes(b"x")
    (small_data / "giraffe" / "photo.cr2").write_bytes(b"II*\0\x10\0\0\0CR")
    ds = load_dataset(small_data)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert reasons == {"notes.txt": "not an image type (.txt)",
                       "readme.jpg": "not inside a class folder",
                       ".hidden.jpg": "hidden file, ignored",
                       "photo.cr2": "unsupported image format (.cr2): convert it to JPEG "
                                     "or PNG"}


def test_find_images_expands_folders_and_rejects_missing(small_data):
    files, skipped = find_images([small_data])
    assert len(files) == 12 and not skipped
    with pytest.raises(DataError, match="not found"):
        find_images([small_data / "nope.jpg"])


def test_stratified_split_keeps_each_class_in_train():
    y = [0] * 10 + [1] * 5 + [2]
    tr, va = stratified_split(y, 0.2, seed=3)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(16))
    held = np.bincount(np.asarray(y)[va], minlength=3).tolist()
    assert held == [2, 1, 0]
    assert stratified_split(y, 0.2, seed=3)[1].tolist() == va.tolist()


def test_fifo_and_device_links_are_skipped_with_reasons_without_blocking(small_data):
    expected = strange_files(small_data / "giraffe")
    ds = bounded(load_dataset, small_data, seconds=30)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    for name, fragment in expected.items():
        assert fragment in reasons[name]
    assert ds.train.counts() == {"elephant": 6, "giraffe": 6}
    files, skipped = bounded(find_images, [small_data / "giraffe" / "pipe.jpg"], seconds=30)
    assert files == [] and "named pipe" in skipped[0].reason


def test_csv_rows_naming_a_fifo_or_a_folder_say_so(small_data, tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(small_data.rglob("*.jpg"))]
    rows += [f"{tmp_path / 'pipe.jpg'},giraffe", f"{small_data / 'giraffe'},giraffe",
             f"{tmp_path / 'gone.jpg'},giraffe"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = bounded(load_dataset, tmp_path / "labels.csv", seconds=30)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert "named pipe" in reasons["pipe.jpg"]
    assert reasons["giraffe"] == "is a folder, not a file"
    assert reasons["gone.jpg"] == "file not found"
    os.mkfifo(tmp_path / "fifo.csv")
    with pytest.raises(DataError, match="named pipe"):
        bounded(load_dataset, tmp_path / "fifo.csv", seconds=30)


def test_class_folder_linking_to_the_data_root_is_a_loop_not_a_class(small_data):
    os.symlink(small_data, small_data / "everything")
    ds = load_dataset(small_data)
    assert ds.train.classes == ["elephant", "giraffe"]
    assert ds.train.counts() == {"elephant": 6, "giraffe": 6}
    assert {Path(s.path).name: s.reason for s in ds.skipped}["everything"] == \
        "symbolic link loop, ignored"


def test_csv_with_a_header_only_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="header but no rows"):
        load_dataset(tmp_path / "labels.csv")


@pytest.mark.slow
def test_a_nul_byte_in_a_csv_path_is_reported_and_skipped(small_data, tmp_path, trained):
    _, model = trained
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(small_data.rglob("*.jpg"))]
    rows.append("giraffe/x\0y.jpg,giraffe")  # once: ValueError: embedded null byte
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    reasons = {s.path: s.reason for s in load_dataset(tmp_path / "labels.csv").skipped}
    assert reasons[str(tmp_path / "giraffe" / "x\0y.jpg")] == \
        "invalid path: it contains a NUL byte"
    labels = tmp_path / "labels.csv"
    for args, code in ((("check", labels, "--no-near"), 3),
                       (("train", labels, "--out", tmp_path / "m"), 0),
                       (("evaluate", model, labels), 0)):
        r = run_cli(*args, timeout=120)
        assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
        assert "NUL byte" in r.stdout + r.stderr, (args, r.stdout, r.stderr)
