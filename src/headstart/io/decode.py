"""Decoding one image file (or upload) to 8-bit RGB, with a reason in words when it fails.

Every failure is an :class:`UnreadableImage` whose message says what the file is: empty,
truncated, text or HTML saved as an image, an unsupported format (RAW, PSD...), too many
pixels (refused from the header, before any decoding), a broken link, a float image with
no finite pixel, unreadable; or not a regular file at all (a folder, a named pipe, a
device such as ``/dev/zero``: refused from ``stat``, never opened in a way that blocks).
Files are read whole, once, and decoded from memory.

Phone photos: AVIF is decoded by Pillow itself; HEIC/HEIF by ``pillow-heif`` (the optional
extra ``headstart[heic]``: its wheels bundle libheif and libde265, LGPL, and the x265
encoder, GPL), whose opener is registered the first time a HEIF file is met, never at
import. Both have their orientation applied like a JPEG's EXIF orientation.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io.files import FileProblem, read_regular

__all__ = ["HEIF_EXTENSIONS", "MAX_PIXELS", "UNSUPPORTED_EXTENSIONS", "UnreadableImage",
           "check_pixels", "check_upload", "heif_reader", "image_error", "load_bytes",
           "open_image", "read_image", "thumbnail_jpeg", "unsupported_reason"]

# Image formats people have but Pillow cannot decode: named in the reason for skipping.
UNSUPPORTED_EXTENSIONS = frozenset(
    {".svg", ".psd", ".raw", ".cr2", ".cr3", ".nef", ".arw",
     ".dng", ".orf", ".rw2", ".jxl", ".ico", ".eps", ".pdf"})
# Phone photos (HEIC/HEIF) read with the ``heic`` extra, and the ISO-BMFF brands that
# mark them (bytes 8-12 of the file, after the "ftyp" box type).
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1",
                         b"msf1"})
HEIC_EXTRA = ("HEIC/HEIF photos need the optional extra: pip install 'headstart[heic]' "
              "(pillow-heif), or convert them to JPEG")
# Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 100_000_000


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``str(e)`` is the reason."""


def check_pixels(img: Image.Image) -> None:
    """Raise :class:`UnreadableImage` if ``img`` (opened, not yet decoded) is too large."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise UnreadableImage(f"too many pixels ({w}x{h} > {MAX_PIXELS:,}; a decompression "
                              "bomb or a scan too large to use)")


def load_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, read without ever blocking (see :mod:`headstart.io.files`).

    Raises:
        UnreadableImage: not a regular file (a folder, FIFO, device, socket), missing, a
            broken link, too large or unreadable.
    """
    try:
        return read_regular(path)
    except FileProblem as e:
        raise UnreadableImage(str(e)) from None


def open_image(source: str | os.PathLike | bytes | BinaryIO) -> Image.Image:
    """Open an image lazily (header only), refusing decompression bombs.

    ``source``: a path (read with :func:`load_bytes`), the file's bytes, or a binary file
    object (an upload).

    Raises:
        UnreadableImage: see :func:`read_image`.
    """
    suffix = Path(source).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    data = load_bytes(source) if isinstance(source, (str, os.PathLike)) else source
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if _is_heif(stream) and not heif_reader():
        raise UnreadableImage(HEIC_EXTRA)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
    except Exception as e:  # noqa: BLE001 - every failure becomes a reason
        raise image_error(e, stream, suffix) from None
    check_pixels(img)
    return img


def _is_heif(stream: BinaryIO) -> bool:
    """Whether the stream holds a HEIF image (not AVIF, which Pillow reads itself)."""
    try:
        pos = stream.tell()
        head = stream.read(16)
        stream.seek(pos)
    except (OSError, ValueError):
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS and b"avif" not in head


@functools.lru_cache(maxsize=1)
def heif_reader() -> bool:
    """Register ``pillow-heif``'s HEIF opener with Pillow (once, on the first HEIF file);
    False when the ``heic`` extra is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def read_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Decode an image as 8-bit RGB, with its EXIF orientation applied.

    Grey, palette, CMYK, 16-bit and float images are converted (float and 32-bit images
    by their actual range); transparency is composited on white; animated images give
    their first frame.

    Raises:
        UnreadableImage: the file is missing, empty, truncated, too large, not an image, or
            a float image without a finite pixel.
    """
    img = source if isinstance(source, Image.Image) else open_image(source)
    try:
        check_pixels(img)
        img.load()
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except UnreadableImage:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes a reason
        fp = getattr(img, "fp", None)
        raise image_error(e, fp if isinstance(fp, io.BytesIO) else None) from None


def check_upload(data: bytes, max_pixels: int, decode: bool = False) -> None:
    """Refuse uploaded bytes that are empty, not an image, or over ``max_pixels`` (from the
    header); with ``decode``, also decode them whole, so that a truncated file is refused
    now rather than later.

    Raises:
        UnreadableImage: with the reason (``too many pixels (WxH > N)`` for the limit).
    """
    if not data:
        raise UnreadableImage("empty file")
    with open_image(io.BytesIO(data)) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise UnreadableImage(f"too many pixels ({w}x{h} > {max_pixels:,})")
    if decode:
        read_image(data)


def thumbnail_jpeg(source: str | os.PathLike | bytes | Image.Image, size: int
                   ) -> bytes | None:
    """A JPEG thumbnail (longer side ``size`` px) of an image, None if it cannot be read."""
    try:
        img = read_image(source)
    except UnreadableImage:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def image_error(e: BaseException, stream: BinaryIO | None = None,
                suffix: str = "") -> UnreadableImage:
    """Why an image could not be opened or decoded, in words (``stream``: its bytes, to
    name what a file that is not an image is)."""
    if isinstance(e, UnreadableImage):
        return e
    if isinstance(e, Image.DecompressionBombError):
        return UnreadableImage(f"too many pixels (over {MAX_PIXELS:,}; a decompression bomb "
                               "or a scan too large to use)")
    if isinstance(e, UnidentifiedImageError):
        return UnreadableImage(_not_an_image(stream, suffix))
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError, MemoryError)):
        return UnreadableImage(f"cannot decode: {e}")
    return UnreadableImage(f"cannot decode: {type(e).__name__}: {e}")


def unsupported_reason(kind: str) -> str:
    """The reason given for an image format Pillow cannot read (``kind``: ``.heic``...)."""
    return f"unsupported image format ({kind}): convert it to JPEG or PNG"


def _not_an_image(stream: BinaryIO | None, suffix: str) -> str:
    """Name what a file that is not an image actually is, when that is easy to tell."""
    if stream is None:
        return "not an image"
    try:
        stream.seek(0)
        head = stream.read(2048)
    except (OSError, ValueError):
        return "not an image"
    if not head:
        return "empty file"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in low:
        return "not an image: an HTML/XML page saved with an image name"
    if head[4:12] == b"ftypavif":
        from PIL import features

        return "cannot decode: a damaged or truncated AVIF file" if features.check("avif") \
            else "an AVIF image this Pillow cannot decode (built without libavif): " \
                 "convert it to JPEG or install a Pillow wheel with AVIF support"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "cannot decode: a damaged or truncated HEIC/HEIF file"
    if suffix in UNSUPPORTED_EXTENSIONS:
        return unsupported_reason(suffix)
    try:
        head.decode("utf-8")
        return "not an image: a text file"
    except UnicodeDecodeError:
        return "not an image (unknown file type)"


def _scaled_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image as 8-bit by its actual range: [0, 1] floats
    and 8-bit values keep their meaning, 16-bit values are divided by 65535, anything else
    is stretched from its minimum to its maximum. Non-finite pixels take the minimum."""
    a = np.asarray(img, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        raise UnreadableImage("float image without a single finite pixel (all NaN or "
                              "infinite)")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0 and img.mode != "F":
        a = a / 257.0
    else:
        a = (a - lo) / (hi - lo if hi > lo else 1.0) * 255.0
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _scaled_to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")
