"""Shared fixtures: real images from ../shared/datasets (or the shipped examples), the real
default backbone, and one feature cache for the whole session so each image's features are
computed once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "safari"
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache per test session, also seen by CLI subprocesses."""
    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HEADSTART_CACHE")
    os.environ["HEADSTART_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
    yield root
    if old is None:
        os.environ.pop("HEADSTART_CACHE", None)
    else:
        os.environ["HEADSTART_CACHE"] = old


@pytest.fixture(scope="session")
def backbone():
    from headstart.backbone.build import load_backbone

    return load_backbone()


def copy_images(dst: Path, per_class: int = 6, split: str = "train") -> Path:
    """``dst/<class>/`` with the first ``per_class`` shipped safari images of each class."""
    for cls_dir in sorted((EXAMPLES / split).iterdir()):
        (dst / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls_dir.iterdir())[:per_class]:
            shutil.copy(f, dst / cls_dir.name / f.name)
    return dst


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    """A class-folder dataset: 6 elephants, 6 giraffes (real photos)."""
    return copy_images(tmp_path / "data")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A classifier trained on the shipped safari train split, and its saved directory."""
    from headstart import Classifier

    clf = Classifier(head="linear").fit(EXAMPLES / "train")
    out = clf.save(tmp_path_factory.mktemp("models") / "safari")
    return clf, out


def tree(root: Path) -> dict[str, str]:
    """Every file, folder and link under ``root``: files with the hash of their bytes, links
    with their target (not followed), so any move, change or loss shows."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link -> " + os.readlink(p)
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "dir" if p.is_dir() else "other"
    return out


def shared(*parts: str) -> Path:
    """A path under ../shared/datasets, failing clearly when the datasets are not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} not found: the tests need the shared datasets in "
                    f"{SHARED} (beside the repository)")
    return path


DIGITS = SHARED / "digits"


def copy_digits(dst: Path, classes=("0", "1", "7"), train: int = 30, val: int = 15) -> Path:
    """``dst/train|val/<digit>/`` with the first images of a few MNIST classes."""
    for split, n in (("train", train), ("val", val)):
        for c in classes:
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for f in sorted(shared("digits", split, c).iterdir())[:n]:
                shutil.copy(f, dst / split / c / f.name)
    return dst


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` grey pixels but holds almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def make_bad_corpus(root: Path) -> tuple[dict[str, str], dict[str, int]]:
    """A class-folder dataset with one file of each broken kind beside good photos.

    Returns ``(unusable, good)``: the relative path of each file that must be reported as
    unusable -> a fragment of its reason, and the number of good images per class.
    """
    import os

    from PIL import Image

    data = copy_images(root, 6)
    ele, gir = data / "elephant", data / "giraffe"
    photo = sorted(ele.iterdir())[0].read_bytes()
    unusable = {}

    def bad(rel: str, content: bytes, reason: str) -> None:
        (data / rel).write_bytes(content)
        unusable[rel] = reason
    bad("elephant/zero.jpg", b"", "empty file")
    bad("elephant/cut.jpg", photo[: len(photo) // 3], "truncated")
    png = io_png()
    bad("giraffe/cut.png", png[: len(png) // 2], "cannot decode")
    bad("giraffe/page.jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "HTML")
    bad("giraffe/words.jpg", b"just some text, not a photo\n", "text file")
    bad("giraffe/phone.heic", b"\0\0\0\x18ftypheic\0\0\0\0", "truncated HEIC")
    bad("giraffe/raw.cr2", b"II*\0\x10\0\0\0CR", "unsupported image format")
    bad("elephant/notes.txt", b"field notes", "not an image type (.txt)")
    _png_header_only(data / "elephant" / "bomb.png", 30000, 30000)
    unusable["elephant/bomb.png"] = "too many pixels"
    _png_header_only(data / "giraffe" / "huge.png", 12000, 10000)
    unusable["giraffe/huge.png"] = "too many pixels"
    os.symlink(data / "elephant" / "gone.jpg", data / "elephant" / "dangling.jpg")
    unusable["elephant/dangling.jpg"] = "broken symbolic link"
    os.symlink(data, gir / "loop")  # a link back up the tree must not recurse forever
    (ele / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    locked = gir / "locked.jpg"
    import numpy as np

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), np.uint8)
                    ).save(locked)
    locked.chmod(0)
    good = {"elephant": 6, "giraffe": 6}
    if os.geteuid() != 0:  # root reads anything: then it is a good (duplicate) image
        unusable["giraffe/locked.jpg"] = "permission denied"
    else:
        good["giraffe"] += 1
    frames = [Image.new("RGB", (64, 64), c) for c in ((200, 30, 30), (30, 30, 200))]
    frames[0].save(gir / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (20, 24), (90, 120, 60)).save(ele / "tiny.png")
    good["giraffe"] += 1
    good["elephant"] += 1
    return unusable, good


def io_png() -> bytes:
    """Bytes of a real 64x64 PNG with varied pixels."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
                    ).save(buf, format="PNG")
    return buf.getvalue()


CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright, *extra: str):
    """Debian's headless Chromium through Playwright (never a downloaded browser);
    ``extra``: more command-line switches (a fake camera, say)."""
    import os

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium missing in CI: tests/install-browser.sh did not run")
        pytest.skip("Debian's chromium is not installed (bash tests/install-browser.sh)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", *extra])


def launch_with_camera(playwright, image: Path, folder: Path):
    """Headless Chromium whose camera shows ``image`` (a fake device fed a Y4M video of it,
    camera access granted without asking)."""
    video = write_y4m(image, folder / f"{image.stem}.y4m")
    return launch_chromium(playwright, "--use-fake-device-for-media-stream",
                           "--use-fake-ui-for-media-stream",
                           f"--use-file-for-fake-video-capture={video}")


def run_cli(*args: Any, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
    """``headstart ARGS`` as a subprocess; a hang fails the test after ``timeout`` s."""
    try:
        return subprocess.run([sys.executable, "-m", "headstart", *map(str, args)],
                              capture_output=True, text=True, errors="replace",
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headstart {' '.join(map(str, args))} hung (> {timeout} s)")


def invoke_cli(*args: Any) -> subprocess.CompletedProcess:
    """``headstart ARGS`` in this process, through Typer's ``CliRunner``: for checks of
    arguments and messages only (no training, no server). Reads like :func:`run_cli`'s
    result; an uncaught exception shows as its traceback on stderr, as in a subprocess."""
    import traceback

    from typer.testing import CliRunner

    from headstart.cli.main import app

    argv = [str(a) for a in args]
    r = CliRunner().invoke(app, argv)
    stderr = r.stderr
    if r.exc_info is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*r.exc_info))
    return subprocess.CompletedProcess(["headstart", *argv], r.exit_code, r.stdout, stderr)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, one ``error:`` line on stderr containing each needle, no traceback."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def bounded(fn: Callable[..., Any], *args: Any, seconds: float = 60, **kw: Any) -> Any:
    """``fn(*args)`` in a thread; fail the test (instead of hanging the suite) if it runs
    longer than ``seconds``. Exceptions are re-raised."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            result["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} hung (> {seconds} s)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def trickle(port: int, request: bytes, drip: bytes = b"", every: float = 1.0,
         seconds: float = 30) -> tuple[int, float, bool]:
    """Send ``request``, then ``drip`` one byte every ``every`` s until answered:
    ``(status, seconds to the answer, connection closed after it)``."""
    import socket
    import time

    t0 = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as c:
        c.sendall(request)
        c.settimeout(every)
        data = b""
        for byte in drip:
            try:
                data += c.recv(65536)
                break
            except socket.timeout:
                c.sendall(bytes([byte]))
            assert time.time() - t0 < seconds, "no answer: the connection is held open"
        c.settimeout(seconds)
        while b"\r\n\r\n" not in data:
            data += c.recv(65536)
        took = time.time() - t0
        c.settimeout(5)
        try:
            while c.recv(65536):
                pass
            closed = True
        except (socket.timeout, ConnectionResetError):
            closed = False
    return int(data.split()[1]), took, closed


def strange_files(folder: Path) -> dict[str, str]:
    """A named pipe (FIFO) and a link to /dev/zero with image names in ``folder``, which
    must be skipped without ever blocking; returns name -> a fragment of the reason."""
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    return {"pipe.jpg": "named pipe", "zero.jpg": "a device"}


def _fit_saved(root: Path, name: str, data: Any, labels: list[str] | None = None):
    from headstart import Classifier

    clf = Classifier().fit(data, labels=labels)
    return clf, clf.save(root / name)


@pytest.fixture(scope="session")
def deploy_models(tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[Any, Path, list[Path]]]:
    """Two saved models and 50 images each that they did not train on, for the phone and
    web exports: ``hymenoptera`` (near ImageNet: the last features) and ``steel`` (steel
    defects, 10 per class: far from ImageNet, so the intermediate blocks are tapped)."""
    root = tmp_path_factory.mktemp("deploy")
    hym = _fit_saved(root, "hymenoptera", shared("hymenoptera", "train"))
    val = sorted(p for p in shared("hymenoptera", "val").rglob("*.jpg"))
    files, labels, held = [], [], []
    for c in sorted(p for p in shared("steel_defects").iterdir() if p.is_dir()):
        imgs = sorted(c.iterdir())
        files += imgs[:10]
        labels += [c.name] * 10
        held += imgs[10:19]
    steel = _fit_saved(root, "steel", [str(f) for f in files], labels)
    return {"hymenoptera": (*hym, val[::3][:50]), "steel": (*steel, held[:50])}


def write_y4m(image: Path, dest: Path, width: int = 640, height: int = 480,
              frames: int = 10) -> Path:
    """A Y4M video (4:2:0) of ``image`` centre-cropped to ``width x height``, for
    Chromium's fake camera (``--use-file-for-fake-video-capture``)."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.fit(Image.open(image).convert("RGB"), (width, height))
    y, cb, cr = (np.asarray(ch) for ch in im.convert("YCbCr").split())
    half = (width // 2, height // 2)
    cb = np.asarray(Image.fromarray(cb).resize(half, Image.BILINEAR))
    cr = np.asarray(Image.fromarray(cr).resize(half, Image.BILINEAR))
    frame = b"FRAME\n" + y.tobytes() + cb.tobytes() + cr.tobytes()
    dest.write_bytes(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode()
                     + frame * frames)
    return dest
