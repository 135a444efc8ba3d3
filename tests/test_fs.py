"""The one check of paths that come from a request, a CSV, a log or a model file
(:func:`headstart.io.files.inside`), its twin for outputs, bounded JSON and names in bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headstart.io.files import (MAX_NAME_BYTES, check_output, clip_name, file_problem, human_bytes,
                           inside, load_json, move_new, name_bytes, read_regular, FileProblem)
from headstart.errors import PathError

from .conftest import bounded


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """``tmp/data/a/x.jpg``, a link out of it, a link inside it, and a file outside."""
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    (data / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.jpg", data / "a" / "out.jpg")
    os.symlink(data / "a" / "x.jpg", data / "b" / "in.jpg")
    os.symlink(tmp_path, data / "up")  # a folder link out
    return data


@pytest.mark.parametrize("given, reason", [
    ("../secret.jpg", "is not inside"),
    ("a/../../secret.jpg", "is not inside"),
    ("a/out.jpg", "leads outside"),
    ("up/secret.jpg", "is not inside"),
    ("a", "is a folder"),
    ("a/..", "folder above"),
    (".", "is not inside"),
    ("a/missing.jpg", "file not found"),
    ("a/x\0.jpg", "NUL byte"),
    ("a/" + "x" * 256 + ".jpg", "longer than 255 bytes"),
])
def test_inside_refuses_every_way_out(folder, given, reason):
    with pytest.raises(PathError, match=reason):
        inside(folder, given, "image")
    with pytest.raises(PathError, match=reason):
        inside(folder, folder / given if "\0" not in given else given, "image")


def test_inside_gives_the_path_itself_not_its_target(folder):
    assert inside(folder, "a/x.jpg") == folder.resolve() / "a" / "x.jpg"
    assert inside(folder, str(folder / "a" / "x.jpg")) == folder.resolve() / "a" / "x.jpg"
    assert inside(folder, "b/in.jpg") == folder.resolve() / "b" / "in.jpg"  # the link
    assert inside(folder, "b", want="folder") == folder.resolve() / "b"
    assert inside(folder, "b/new.jpg", want="absent") == folder.resolve() / "b" / "new.jpg"
    with pytest.raises(PathError, match="already exists"):
        inside(folder, "b/in.jpg", want="absent")
    with pytest.raises(PathError, match="is .* itself|not inside"):
        inside(folder, str(folder), want="folder")


def test_outputs_are_never_a_pipe_a_device_or_a_folder(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for path, reason in [(tmp_path / "fifo", "named pipe"), ("/dev/null", "device"),
                         (tmp_path, "folder"), (tmp_path / "no" / "x.csv", "does not exist"),
                         (tmp_path / "dangling", "broken symbolic link"),
                         (str(tmp_path / "a\0.csv"), "NUL byte")]:
        with pytest.raises(PathError, match=reason) as e:
            bounded(check_output, path, "csv", seconds=10)
        assert str(path).split("\0")[0][:20] in str(e.value)  # the path is named
    assert check_output(tmp_path / "new.csv") == tmp_path / "new.csv"


def test_json_nesting_is_bounded_before_parsing():
    assert load_json('{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}') == \
        {"a": [1, {"b": "[" * 37}]}
    deep = "[" * 50_000 + "]" * 50_000  # Python's parser alone raises RecursionError
    with pytest.raises(ValueError, match="nested more than 32 levels"):
        load_json(deep)
    with pytest.raises(ValueError):
        load_json(b"{not json")


def test_names_are_counted_in_bytes_and_sizes_in_readable_units(tmp_path):
    name = "漢" * 120 + ".jpg"  # 120 characters, 364 bytes
    clipped = clip_name(name, 200)
    assert name_bytes(clipped) <= 200 and clipped.endswith(".jpg")
    (tmp_path / clip_name(name, MAX_NAME_BYTES)).write_bytes(b"ok")  # the file system agrees
    assert human_bytes(30 * 2 ** 20) == "30.0 MiB" and human_bytes(512) == "512 bytes"
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (30 << 20))
    with pytest.raises(FileProblem, match=r"30\.0 MiB > 16\.0 MiB"):
        read_regular(big, 16 << 20)
    assert file_problem(str(tmp_path / "x\0.jpg")) == "invalid path: it contains a NUL byte"


def test_move_new_never_replaces(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        move_new(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    move_new(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_text() == "a" and not (tmp_path / "a").exists()
