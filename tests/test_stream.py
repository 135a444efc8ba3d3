from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from headstart import Classifier
from headstart.deploy.cluster import predict_ray
from headstart.errors import DataError, HeadstartError
from headstart.deploy.stream import predict_stream

from .conftest import EXAMPLES, assert_user_error, invoke_cli, run_cli, shared

pytestmark = pytest.mark.slow  # a trained model, or a Ray cluster, in every test

RAY_NOISE = re.compile(r"logging\.cc|core_worker|Warning")  # Ray's own lines on stderr


def _sorted_rows(path) -> list[tuple[str, ...]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [tuple(rows[0])] + sorted(tuple(r) for r in rows[1:])


def test_stream_writes_one_row_per_readable_image_and_lists_the_rest(trained, tmp_path):
    _, model = trained
    folder = tmp_path / "imgs"
    shutil.copytree(EXAMPLES / "test", folder)
    (folder / "giraffe" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    clf = Classifier.load(model, cache=False)
    out = tmp_path / "p.jsonl"
    r = predict_stream(clf, [folder], out, chunk=7)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r.written == len(rows) == 30 and r.resumed == 0
    assert sorted(s.path.rsplit("/", 1)[1] for s in r.skipped) == ["broken.jpg", "notes.txt"]
    assert sum(r.counts.values()) == 30
    assert all(len(x["content_hash"]) == 32 and x["label"] in clf.classes_ + ["unknown"]
               for x in rows)
    again = predict_stream(clf, [folder], out, resume=True, chunk=7)
    assert again.written == 0 and again.resumed == 30  # nothing left to do
    photo = folder / "giraffe" / json.loads(out.read_text().splitlines()[-1])["path"] \
        .rsplit("/", 1)[1]
    shutil.copy(sorted((EXAMPLES / "test" / "elephant").iterdir())[0], photo)  # new bytes
    changed = predict_stream(clf, [folder], out, resume=True, chunk=7)
    assert changed.written == 1 and changed.resumed == 29
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and len({x["path"] for x in rows}) == 30  # replaced, not added
    assert [x["content_hash"] for x in rows if x["path"] == str(photo)] == \
        [changed_hash(photo)]
    with pytest.raises(DataError, match="cannot resume"):
        (tmp_path / "other.csv").write_text("a,b\n1,2\n")
        predict_stream(clf, [folder], tmp_path / "other.csv", resume=True)


def changed_hash(path) -> str:
    from headstart.io.files import digest_bytes

    return digest_bytes(path.read_bytes())


def test_kill_9_then_resume_gives_the_uninterrupted_file(trained, tmp_path):
    _, model = trained
    images = shared("hymenoptera", "val")
    full = tmp_path / "full.csv"
    r = run_cli("predict", model, images, "--csv", full, "--chunk", "16")
    assert r.returncode == 0, r.stderr
    assert len(_sorted_rows(full)) == 1 + 153
    part = tmp_path / "part.csv"
    cmd = [sys.executable, "-m", "headstart", "predict", str(model), str(images), "--csv",
           str(part), "--chunk", "16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = random.Random(0).randint(20, 120)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") > target:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = part.read_bytes().count(b"\n") - 1
    assert 0 < written < 153, written  # killed part-way
    r = run_cli("predict", model, images, "--csv", part, "--chunk", "16", "--resume",
                "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["resumed"] >= written - 16 and got["resumed"] + got["written"] == 153
    assert _sorted_rows(part) == _sorted_rows(full)  # no row lost, none twice


def test_stream_options_are_checked(trained, tmp_path):
    _, model = trained
    old = tmp_path / "old.csv"
    old.write_text("the user's own file\n")
    assert_user_error(invoke_cli("predict", model, tmp_path / "typo", "--csv", old),
                      "path not found")
    assert old.read_text() == "the user's own file\n"  # untouched
    assert_user_error(invoke_cli("predict", model, EXAMPLES / "test", "--resume"),
                      "--resume")
    assert_user_error(invoke_cli("predict", model, EXAMPLES / "test", "--csv",
                                 tmp_path / "a", "--jsonl", tmp_path / "b"),
                      "--csv and --jsonl")


@pytest.mark.ray
def test_ray_cluster_gives_the_local_answers_after_a_kill_and_resume(trained, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    _, model = trained
    images = tmp_path / "imgs"
    (images / "a").mkdir(parents=True)
    for f in sorted(shared("hymenoptera", "val").rglob("*.jpg"))[:150]:
        shutil.copy(f, images / "a" / f.name)
    shutil.copytree(EXAMPLES, images / "b")  # 150 + 50 images, and a text file
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    r = run_cli("predict", model, images, "--csv", local)
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "headstart", "predict", str(model), str(images), "--csv",
           str(remote), "--cluster", "local", "--workers", "2", "--chunk", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if remote.exists() and remote.read_bytes().count(b"\n") > 40:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # Ray's own processes share the driver's fate
    proc.wait()
    written = remote.read_bytes().count(b"\n") - 1
    assert 40 <= written < 200, written  # killed part-way, rows merged from the shards
    r = run_cli("predict", model, images, "--csv", remote, "--cluster", "local",
                "--workers", "2", "--resume", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert not RAY_NOISE.search(r.stderr), r.stderr  # the CLI owns stderr
    assert got["resumed"] >= written and got["resumed"] + got["written"] == 200
    assert got["skipped"]  # ATTRIBUTION.md is not an image
    assert not (tmp_path / ".ray.csv.parts").exists()  # every shard merged, then removed
    a = {row["path"]: row for row in csv.DictReader(local.open())}
    b = {row["path"]: row for row in csv.DictReader(remote.open())}
    assert a.keys() == b.keys() and len(a) == 200
    assert len(remote.read_text().splitlines()) == 201  # no row twice
    for path, row in a.items():
        assert b[path]["label"] == row["label"] and b[path]["content_hash"] == \
            row["content_hash"]
        assert [float(b[path][k]) for k in row if k.startswith("p_")] == pytest.approx(
            [float(row[k]) for k in row if k.startswith("p_")], abs=1e-5)
    photo = images / "a" / sorted((images / "a").iterdir())[0].name
    shutil.copy(sorted((EXAMPLES / "test" / "elephant").iterdir())[0], photo)  # new bytes
    r = run_cli("predict", model, images, "--csv", remote, "--cluster", "local",
                "--resume", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["written"] == 1 and got["resumed"] == 199  # its new row replaces the old
    rows = [row for row in csv.DictReader(remote.open()) if row["path"] == str(photo)]
    assert len(rows) == 1 and rows[0]["content_hash"] != a[str(photo)]["content_hash"]
    assert len(remote.read_text().splitlines()) == 201
    assert_user_error(run_cli("predict", model, images, "--cluster", "local"), "--cluster")


def test_resume_merges_the_shards_a_killed_ray_run_left(trained, tmp_path):
    _, model = trained
    full = tmp_path / "full.csv"
    predict_stream(Classifier.load(model, cache=False), [EXAMPLES / "test"], full)
    lines = full.read_text().splitlines(keepends=True)
    out, parts = tmp_path / "out.csv", tmp_path / ".out.csv.parts"
    out.write_text("".join(lines[:21]) + lines[21][:30])  # a row cut by the kill
    parts.mkdir()
    (parts / "part-1.csv").write_text("".join(lines[15:26]))  # merged in part already
    (parts / "part-2.csv").write_text("".join(lines[26:]))
    (parts / ".part-3.csv.tmp").write_text(lines[5][:10])  # a shard being written
    r = predict_ray(model, [EXAMPLES / "test"], out, resume=True)  # no Ray needed
    assert r.written == 0 and r.resumed == 30
    assert _sorted_rows(out) == _sorted_rows(full) and not parts.exists()
    with pytest.raises(DataError, match="path not found"):  # before the output is opened
        predict_ray(model, [tmp_path / "typo"], out)
    assert _sorted_rows(out) == _sorted_rows(full)
    parts.mkdir()
    (parts / "mine.txt").write_text("the user's")
    with pytest.raises(HeadstartError, match="did not write"):
        predict_ray(model, [EXAMPLES / "test"], out, resume=True)
    assert (parts / "mine.txt").read_text() == "the user's"


def test_without_ray_the_cluster_option_says_what_to_install(trained, tmp_path):
    _, model = trained
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['headstart'] + sys.argv[1:];"
            " from headstart.cli.main import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "predict", str(model),
                        str(EXAMPLES / "test"), "--csv", str(tmp_path / "p.csv"), "--cluster",
                        "local"], capture_output=True, text=True, timeout=300)
    assert_user_error(r, "pip install 'headstart[ray]'")


@pytest.mark.ray
def test_train_on_a_ray_cluster_computes_the_features_there(tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    cache = tmp_path / "cache"  # empty: every feature comes from the Ray workers
    env = {**os.environ, "HEADSTART_CACHE": str(cache)}
    r = run_cli("train", EXAMPLES / "train", "--out", tmp_path / "m", "--cluster", "local",
                "--json", timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert not RAY_NOISE.search(r.stderr), r.stderr
    assert s["features_computed"] == 0 and s["features_cached"] == 20  # all from Ray
    local = run_cli("train", EXAMPLES / "train", "--out", tmp_path / "m2", "--json",
                    "--cache-dir", tmp_path / "fresh", timeout=600)
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout)["val_accuracy"] == s["val_accuracy"]
    a = Classifier.load(tmp_path / "m", cache=False)
    b = Classifier.load(tmp_path / "m2", cache=False)
    files = sorted((EXAMPLES / "test").rglob("*.jpg"))
    assert a.predict(files) == b.predict(files)
    assert a.predict_images(files).proba == pytest.approx(b.predict_images(files).proba,
                                                         abs=1e-5)


def test_resume_refuses_another_models_output_and_leaves_it_untouched(trained, tmp_path):
    _, model = trained
    images = EXAMPLES / "test" / "giraffe"
    mine = tmp_path / "mine.csv"
    assert run_cli("predict", model, images, "--csv", mine).returncode == 0
    other = tmp_path / "other.csv"  # the same rows, as a model of other classes writes them
    other.write_bytes(mine.read_bytes().replace(b"p_giraffe", b"p_zebra", 1))
    jsonl = tmp_path / "other.jsonl"
    assert run_cli("predict", model, images, "--jsonl", jsonl).returncode == 0
    jsonl.write_bytes(jsonl.read_bytes().replace(b'"giraffe":', b'"zebra":'))
    short = tmp_path / "short.csv"  # a row with a column missing
    short.write_bytes(mine.read_bytes().replace(b",0,", b",", 1))
    for path, needle in [(other, "columns"), (jsonl, "classes"), (short, "columns")]:
        before = path.read_bytes() + b"cut"  # a last line a kill cut: kept, too
        path.write_bytes(before)
        flag = "--jsonl" if path.suffix == ".jsonl" else "--csv"
        assert_user_error(run_cli("predict", model, images, flag, path, "--resume",
                                  timeout=120), str(path), needle, "untouched")
        assert path.read_bytes() == before


def test_one_writer_per_output_file(trained, tmp_path):
    import fcntl

    _, model = trained
    images = shared("hymenoptera", "val")
    out = tmp_path / "p.csv"
    out.write_text("")
    with open(out, "a") as held:  # another writer holds the file
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        for resume in ((), ("--resume",)):
            assert_user_error(run_cli("predict", model, images, "--csv", out, *resume,
                                      timeout=120), str(out), "another headstart process")
    assert out.read_text() == ""
    cmd = [sys.executable, "-m", "headstart", "predict", str(model), str(images), "--csv",
           str(out), "--resume", "--chunk", "16"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # two at once, for real
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) in ([0, 0], [0, 2]), [p.stderr.read() for p in procs]
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0][0] == "path" and sum(r[0] == "path" for r in rows) == 1  # one header
    assert len(rows) == 1 + 153 and len({r[0] for r in rows[1:]}) == 153  # none twice


@pytest.mark.parametrize("flag", ["--csv", "--jsonl"])
@pytest.mark.parametrize("resume", [(), ("--resume",)])
def test_an_output_that_is_a_fifo_or_refuses_writes_is_one_error_line(trained, tmp_path,
                                                                       flag, resume):
    _, model = trained
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    r = run_cli("predict", model, EXAMPLES / "test" / "giraffe", flag, fifo, *resume,
                timeout=60)  # a hang fails here
    assert_user_error(r, str(fifo), "named pipe")
    if flag == "--csv" and not resume:
        assert_user_error(run_cli("predict", model, EXAMPLES / "test" / "giraffe", flag,
                                  "/proc/version", timeout=60), "/proc/version")
        assert_user_error(run_cli("predict", model, EXAMPLES / "test" / "giraffe", flag,
                                  tmp_path, timeout=60), str(tmp_path), "folder")
