"""Decoding one image file (or upload) to 8-bit RGB, with a reason in words when it fails.

Every failure is an :class:`UnreadableImage` whose message says what the file is: empty,
truncated, text or HTML saved as an image, an unsupported format (HEIC, RAW...), too many
pixels (refused from the header, before any decoding), a broken link, unreadable.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "UNSUPPORTED_EXTENSIONS", "UnreadableImage", "check_pixels",
           "image_error", "open_image", "read_image", "unsupported_reason"]

# Image formats people have but Pillow cannot decode: named in the reason for skipping.
UNSUPPORTED_EXTENSIONS = frozenset(
    {".heic", ".heif", ".avif", ".svg", ".psd", ".raw", ".cr2", ".cr3", ".nef", ".arw",
     ".dng", ".orf", ".rw2", ".jxl", ".ico", ".eps", ".pdf"})
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


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file lazily (header only), refusing decompression bombs.

    Raises:
        UnreadableImage: see :func:`read_image`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Exception as e:  # noqa: BLE001 - every failure becomes a reason
        raise image_error(e, path) from None
    check_pixels(img)
    return img


def read_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Decode an image as 8-bit RGB, with its EXIF orientation applied.

    Grey, palette, CMYK, 16-bit and float images are converted; transparency is composited
    on white; animated images give their first frame.

    Raises:
        UnreadableImage: the file is missing, empty, truncated, too large or not an image.
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
        raise image_error(e, None if isinstance(source, Image.Image) else source) from None


def image_error(e: BaseException, path: Any) -> UnreadableImage:
    """Why an image could not be opened or decoded, in words."""
    if isinstance(e, FileNotFoundError):
        if isinstance(path, (str, os.PathLike)) and os.path.islink(path):
            return UnreadableImage("broken symbolic link (its target is missing)")
        return UnreadableImage("file not found")
    if isinstance(e, IsADirectoryError):
        return UnreadableImage("is a directory")
    if isinstance(e, PermissionError):
        return UnreadableImage("permission denied")
    if isinstance(e, Image.DecompressionBombError):
        return UnreadableImage(f"too many pixels (over {MAX_PIXELS:,}; a decompression bomb "
                               "or a scan too large to use)")
    if isinstance(e, UnidentifiedImageError):
        return UnreadableImage(_not_an_image(path))
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError, MemoryError)):
        return UnreadableImage(f"cannot decode: {e}")
    return UnreadableImage(f"cannot decode: {type(e).__name__}: {e}")


def unsupported_reason(kind: str) -> str:
    """The reason given for an image format Pillow cannot read (``kind``: ``.heic``...)."""
    return f"unsupported image format ({kind}): convert it to JPEG or PNG"


def _not_an_image(path: Any) -> str:
    """Name what a file that is not an image actually is, when that is easy to tell."""
    if path is None:
        return "not an image"
    try:
        if hasattr(path, "read"):  # an in-memory upload
            path.seek(0)
            head, path = path.read(2048), ""
        else:
            with open(path, "rb") as fh:
                head = fh.read(2048)
    except (OSError, ValueError):
        return "not an image"
    if not head:
        return "empty file"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in low:
        return "not an image: an HTML/XML page saved with an image name"
    suffix = Path(path).suffix.lower()
    if suffix in UNSUPPORTED_EXTENSIONS or head[4:12] in (b"ftypheic", b"ftypheix",
                                                          b"ftypmif1", b"ftypavif"):
        return unsupported_reason(suffix or "HEIC/AVIF")
    try:
        head.decode("utf-8")
        return "not an image: a text file"
    except UnicodeDecodeError:
        return "not an image (unknown file type)"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")
