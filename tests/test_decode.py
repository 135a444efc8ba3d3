"""Decoding images: every mode to RGB, and a reason in words for each unusable file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.io.files import _os_reason
from headstart.io.decode import UnreadableImage, read_image

from .conftest import EXAMPLES, bounded, strange_files


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_read_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(path).size == (30, 60)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                                      ("RGB", "WEBP"), ("RGB", "TIFF"), ("RGB", "BMP"),
                                      ("I;16", "PNG"), ("LA", "PNG")])
def test_read_image_converts_every_mode_to_rgb(tmp_path, mode, fmt):
    img = Image.new(mode, (40, 40))
    path = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    out = read_image(path)
    assert out.mode == "RGB" and out.size == (40, 40)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = np.full((8, 8), 32768, dtype=np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "deep.png")
    assert abs(int(np.asarray(read_image(path))[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white(tmp_path):
    path = _save(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert np.asarray(read_image(path)).min() == 255


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(read_image(path))[0, 0]) == (255, 0, 0)


def test_unreadable_files_give_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<html>not an image</html>")
    good = (EXAMPLES / "train" / "giraffe").iterdir().__next__().read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    reasons = {}
    for name in ("empty.jpg", "page.jpg", "cut.jpg", "missing.jpg"):
        with pytest.raises(UnreadableImage) as e:
            read_image(tmp_path / name)
        reasons[name] = str(e.value)
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["page.jpg"] == "not an image: an HTML/XML page saved with an image name"
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["missing.jpg"] == "file not found"


def test_unreadable_permission_reason(tmp_path):
    path = tmp_path / "x.jpg"
    assert _os_reason(PermissionError(13, "denied"), path) == "permission denied"
    if os.geteuid() != 0:  # root reads a chmod 000 file: only the mapping can be checked
        shutil.copy(sorted((EXAMPLES / "train" / "giraffe").iterdir())[0], path)
        path.chmod(0)
        with pytest.raises(UnreadableImage, match="permission denied"):
            read_image(path)


def test_float_images_are_scaled_by_their_range(tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.random((32, 32)).astype(np.float32)            # a float TIFF in [0, 1]
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    got = np.asarray(read_image(tmp_path / "unit.tif"))[..., 0].astype(float)
    np.testing.assert_allclose(got, np.round(unit * 255), atol=1)
    wide = (unit * 4000 - 1000).astype(np.float32)             # any other range: stretched
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    got = np.asarray(read_image(tmp_path / "wide.tif"))[..., 0]
    assert got.min() == 0 and got.max() == 255
    some_nan = unit.copy()
    some_nan[0, :5] = np.nan
    Image.fromarray(some_nan, mode="F").save(tmp_path / "nodata.tif")
    assert np.asarray(read_image(tmp_path / "nodata.tif")).max() > 200
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(UnreadableImage, match="no.*finite|without a single finite"):
        read_image(tmp_path / "nan.tif")


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    expected = strange_files(tmp_path)
    for name, fragment in expected.items():
        with pytest.raises(UnreadableImage, match=fragment):
            bounded(read_image, tmp_path / name, seconds=20)
    with pytest.raises(UnreadableImage, match="is a folder"):
        read_image(tmp_path)


def test_a_huge_file_is_refused_from_its_size(tmp_path):
    with open(tmp_path / "huge.jpg", "wb") as fh:  # sparse: no disk used
        fh.truncate(3 << 30)
    with pytest.raises(UnreadableImage, match="file too large"):
        bounded(read_image, tmp_path / "huge.jpg", seconds=10)


def phone_photo(src: Path, dest: Path, fmt: str, orientation: int = 6) -> Path:
    """``src`` saved as a phone would (HEIC through pillow-heif, AVIF through Pillow), turned
    on its side with an EXIF orientation ``orientation`` saying how to show it upright."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    # stored sideways (as the sensor saw it): orientation 6 turns it back clockwise
    stored = img.transpose(Image.Transpose.ROTATE_90)
    return _save(stored, dest, format=fmt, exif=exif.tobytes(), quality=92)


@pytest.mark.parametrize("fmt,suffix", [("HEIF", ".heic"), ("AVIF", ".avif")])
def test_heic_and_avif_read_like_jpeg_upright(tmp_path, fmt, suffix):
    src = sorted((EXAMPLES / "train" / "giraffe").iterdir())[0]
    path = phone_photo(src, tmp_path / f"phone{suffix}", fmt)
    want = read_image(src)
    got = read_image(path)
    assert got.mode == "RGB" and got.size == want.size
    diff = np.abs(np.asarray(got, float) - np.asarray(want, float)).mean()
    assert diff < 12, diff  # the same picture, upright (lossy codecs: a small difference)
    sideways = np.abs(np.asarray(got.transpose(Image.Transpose.ROTATE_180), float)
                      - np.asarray(want, float)).mean()
    assert sideways > 2 * diff


def test_heic_without_the_extra_names_it_and_damaged_files_say_so(tmp_path):
    import subprocess
    import sys

    src = sorted((EXAMPLES / "train" / "giraffe").iterdir())[0]
    heic = phone_photo(src, tmp_path / "phone.heic", "HEIF")
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from headstart.io.decode import read_image, UnreadableImage\n"
            f"try: read_image({str(heic)!r})\n"
            "except UnreadableImage as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "pip install 'headstart[heic]'" in out, out
    for name in ("cut.heic", "cut.avif"):
        data = (heic if name.endswith("heic") else
                phone_photo(src, tmp_path / "p.avif", "AVIF")).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(UnreadableImage, match="cannot decode"):
            read_image(tmp_path / name)
