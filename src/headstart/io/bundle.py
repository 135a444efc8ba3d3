"""The model directory on disk: recognised by its signature, written atomically, every file
checked against its recorded digest and every field of ``headstart.json`` validated.

A bundle is a folder of ``headstart.json`` (metadata) and named safetensors files, plus
optional plain files (an OpenVINO IR, ``metrics.csv``, ``report.html``). Rules:

* **Signature**: a folder is a headstart model when ``headstart.json`` is a JSON object with
  ``format = "headstart-model"`` and a known ``format_version``, and the required files
  (:data:`REQUIRED_FILES`) are there. A file named ``headstart.json`` alone proves nothing.
* **Nothing lost**: :func:`write_bundle` replaces only an empty folder or a complete model
  that holds nothing but the files headstart writes (:data:`MODEL_FILES`, and the exports
  written into it, named ``model.<suffix>`` by every export format); anything else
  is an error, checked before any work by :func:`check_destination`. The new folder is
  written beside the old one and swapped in (see :mod:`headstart.io.files`), so a crash never
  leaves a half-written model or no model at all; leftovers of a killed save are cleaned
  and an interrupted swap is undone on the next run.
* **Integrity**: ``files`` in ``headstart.json`` maps each file to its SHA-256, written at
  save and checked when the file is read (:func:`read_arrays`, :func:`verified_digest`).
* **Validation**: :func:`read_meta` checks types and ranges of every field it knows and
  names the field in its error; shapes of arrays are checked with :func:`expect_shapes`.

No pickle, ever.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..io.files import FileProblem, atomic_folder, file_digest, load_json, read_regular, recover_folder
from ..errors import ModelError

__all__ = ["EXPORT_STEM", "FORMAT", "FORMAT_VERSION", "MODEL_FILE", "MODEL_FILES", "REQUIRED_FILES",
           "TEMPERATURE_RANGE", "check_destination", "expect_shapes", "is_model_dir",
           "read_arrays", "read_meta", "verified_digest", "write_bundle"]

logger = logging.getLogger(__name__)

MODEL_FILE = "headstart.json"
FORMAT = "headstart-model"
FORMAT_VERSION = 1
REQUIRED_FILES = (MODEL_FILE, "backbone.safetensors", "head.safetensors")
# Every file headstart itself puts in a model directory (train, save, export, evaluate).
MODEL_FILES = frozenset(REQUIRED_FILES + (
    "ood.safetensors", "hashes.safetensors", "metrics.csv", "report.html", "metrics.json",
    "backbone.int8.xml", "backbone.int8.bin", "backbone.fp32.xml", "backbone.fp32.bin"))
EXPORT_STEM = "model"  # an export's default output in the model folder: model.<suffix>
MAX_META_BYTES = 16 << 20  # headstart.json: a few KB written, a bound on what is read
# a saved temperature (calibration fits it inside this range; the file is refused outside)
TEMPERATURE_RANGE = (1e-2, 1e3)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box")


def _signature(d: Path) -> bool:
    try:
        meta = load_json(read_regular(d / MODEL_FILE, MAX_META_BYTES))
    except (FileProblem, ValueError):
        return False
    return (isinstance(meta, dict) and meta.get("format") == FORMAT
            and isinstance(meta.get("format_version"), int)
            and meta["format_version"] <= FORMAT_VERSION
            and all((d / f).is_file() for f in REQUIRED_FILES))


def is_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a complete headstart model directory (see the module doc)."""
    d = Path(path)
    return d.is_dir() and _signature(d)


def check_destination(path: str | os.PathLike) -> None:
    """Raise unless a model may be written to ``path``: absent, an empty folder, or a
    complete headstart model holding only headstart's own files. Undoes an interrupted
    swap first (see :func:`headstart.io.files.recover_folder`).

    Raises:
        ModelError: ``path`` is a file, a folder that is not a headstart model, or a model
            folder with other files in it (they would be lost).
    """
    out = Path(path)
    recover_folder(out, is_model_dir)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ModelError(f"{out}: cannot create it, {parent} is a file")
            break
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ModelError(f"{out} exists and is not a folder; choose another path")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    if not _signature(out):
        raise ModelError(f"{out} exists and is not a headstart model directory (it holds "
                         f"{_listed(names)}); choose another path")
    other = [n for n in names if n not in MODEL_FILES
             and not n.startswith(EXPORT_STEM + ".")]
    if other:
        raise ModelError(f"{out} is a headstart model but also holds other files "
                         f"({_listed(other)}) that replacing it would delete; move them "
                         "or choose another path")


def _listed(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def write_bundle(path: str | os.PathLike, meta: dict[str, Any],
                 arrays: dict[str, dict[str, np.ndarray]],
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write each ``arrays[name]`` as ``name`` (safetensors) and whatever
    ``extra(tmp_folder)`` adds, then ``meta`` with the files' digests as
    ``headstart.json``, then move the folder into place.

    Raises:
        ModelError: ``path`` may not be replaced (:func:`check_destination`), or the write
            failed (full disk, no permission...): nothing is changed then.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    out = Path(path)
    check_destination(out)
    try:
        with atomic_folder(out) as tmp:
            for name, tensors in arrays.items():
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                          str(tmp / name))
            if extra is not None:
                extra(tmp)
            files = {f.name: file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
                    "files": files}
            (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    except (OSError, SafetensorError, FileProblem) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ModelError(f"cannot write the model to {out}: {reason}; nothing was "
                         "changed") from None
    logger.info("saved model to %s", out)
    return out


# ------------------------------------------------------------------ reading and validation
def _bad(field: str, expected: str, got: Any) -> ModelError:
    shown = json.dumps(got)[:60] if not isinstance(got, np.ndarray) else f"shape {got.shape}"
    return ModelError(f"{MODEL_FILE}: {field} must be {expected}, got {shown}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _check_preprocess(p: Any) -> None:
    f = "backbone.preprocess"
    if not isinstance(p, dict):
        raise _bad(f, "an object", p)
    if not isinstance(p.get("size"), int) or not 8 <= p["size"] <= 4096:
        raise _bad(f + ".size", "an integer of pixels (8-4096)", p.get("size"))
    if not _number(p.get("crop_pct")) or not 0 < p["crop_pct"] <= 1:
        raise _bad(f + ".crop_pct", "a number in (0, 1]", p.get("crop_pct"))
    if p.get("interpolation") not in INTERPOLATIONS:
        raise _bad(f + ".interpolation", f"one of {', '.join(INTERPOLATIONS)}",
                   p.get("interpolation"))
    for key in ("mean", "std"):
        v = p.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_number(x) for x in v)) or \
                (key == "std" and min(v) <= 0):
            raise _bad(f"{f}.{key}", "3 numbers" + (" > 0" if key == "std" else ""), v)


def _check_meta(meta: Any) -> None:
    """Types and ranges of the fields of ``headstart.json`` (see the module docstring)."""
    if not isinstance(meta, dict):
        raise ModelError(f"{MODEL_FILE} must hold a JSON object, got a "
                         f"{type(meta).__name__}")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) and c for c in classes)
            and len(set(classes)) == len(classes)):
        raise _bad("classes", "a list of at least 2 distinct class names", classes)
    b = meta.get("backbone")
    if not isinstance(b, dict):
        raise _bad("backbone", "an object (name, timm_name, weights_id, num_features, "
                   "preprocess)", b)
    for key in ("name", "timm_name", "weights_id"):
        if not isinstance(b.get(key), str) or not b[key]:
            raise _bad(f"backbone.{key}", "a non-empty string", b.get(key))
    if not isinstance(b.get("num_features"), int) or b["num_features"] < 1:
        raise _bad("backbone.num_features", "a positive integer", b.get("num_features"))
    taps, widths = b.get("taps", []), b.get("tap_widths", [])
    if not (isinstance(taps, list) and isinstance(widths, list) and len(taps) == len(widths)
            and all(isinstance(v, int) and v >= 0 for v in taps + widths)
            and sum(widths) < b["num_features"]):
        raise _bad("backbone.taps", "block numbers and as many widths (integers), narrower "
                   "in all than num_features", {"taps": taps, "tap_widths": widths})
    grid = b.get("tap_grid", 1)
    if type(grid) is not int or not 1 <= grid <= 8:
        raise _bad("backbone.tap_grid", "an integer from 1 to 8 (cells a side)", grid)
    _check_preprocess(b.get("preprocess"))
    head = meta.get("head")
    if not isinstance(head, dict) or not isinstance(head.get("kind"), str) or not head["kind"]:
        raise _bad("head.kind", "the name of a head kind",  # the kind is checked on load
                   head.get("kind") if isinstance(head, dict) else head)
    t, (lo, hi) = meta.get("temperature", 1.0), TEMPERATURE_RANGE
    if not _number(t) or not lo <= t <= hi:
        raise _bad("temperature", f"a number from {lo:g} to {hi:g}", t)
    ood = meta.get("ood")
    if ood is not None:
        if not isinstance(ood, dict):
            raise _bad("ood", "null or an object (k, threshold, keep)", ood)
        if not isinstance(ood.get("k"), int) or ood["k"] < 1:
            raise _bad("ood.k", "an integer >= 1", ood.get("k"))
        if not _number(ood.get("threshold")):
            raise _bad("ood.threshold", "a finite number", ood.get("threshold"))
        if not _number(ood.get("keep", 0.95)) or not 0 < ood.get("keep", 0.95) < 1:
            raise _bad("ood.keep", "a number in (0, 1)", ood.get("keep"))
    if meta.get("int8") is not None and not isinstance(meta["int8"], str):
        raise _bad("int8", "null or a string", meta["int8"])
    if not isinstance(meta.get("summary", {}), dict):
        raise _bad("summary", "an object", meta.get("summary"))
    files = meta.get("files", {})
    if not (isinstance(files, dict) and all(isinstance(v, str) and len(v) == 64
                                            for v in files.values())):
        raise _bad("files", "an object of file name -> SHA-256 hex digest", files)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``headstart.json`` of a model directory, validated (see the module docstring).

    Raises:
        ModelError: missing directory, not a headstart model, a newer format, or a field
            of the wrong type or range (the message names it).
    """
    d = Path(path)
    recover_folder(d, is_model_dir)
    if not d.is_dir():
        raise ModelError(f"model directory not found: {d}")
    try:
        meta = load_json(read_regular(d / MODEL_FILE, MAX_META_BYTES))
    except (FileProblem, ValueError) as e:
        raise ModelError(f"{d} is not a headstart model ({MODEL_FILE}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{d} is not a headstart model ({MODEL_FILE} has no "
                         f"\"format\": \"{FORMAT}\")")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{d}: unsupported model format version {version!r} (this "
                         f"headstart reads version {FORMAT_VERSION}; upgrade headstart)")
    try:
        _check_meta(meta)
    except ModelError as e:
        raise ModelError(f"{d}: {e}") from None
    return meta


def verified_digest(path: str | os.PathLike, name: str, meta: Mapping[str, Any],
                    data: bytes | None = None) -> tuple[str, bool]:
    """SHA-256 of file ``name`` (or of ``data``, its bytes) and whether it was checked
    against the digest recorded at save (models written before digests: not checked).

    Raises:
        ModelError: the file is missing or unreadable, was not recorded at save, or its
            content differs from what was saved.
    """
    import hashlib

    d = Path(path)
    if data is None:
        try:
            data = read_regular(d / name)
        except FileProblem as e:
            raise ModelError(f"{d}: {name}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    files = meta.get("files")
    if files is None:
        return digest, False
    if name not in files:
        raise ModelError(f"{d}: {name} was not written with this model ({MODEL_FILE} "
                         "records no digest for it); remove it or retrain")
    if files[name] != digest:
        raise ModelError(f"{d}: {name} has changed since the model was saved (SHA-256 "
                         f"{digest[:12]}... != {files[name][:12]}...): it is truncated, "
                         "corrupt or replaced; retrain, or restore the original file")
    return digest, True


def read_arrays(path: str | os.PathLike, name: str, meta: Mapping[str, Any],
                required: bool = True) -> dict[str, np.ndarray] | None:
    """The arrays of safetensors file ``name`` in a model directory, its digest checked
    (None if optional and missing).

    Raises:
        ModelError: a required file is missing, or any file is changed or corrupt.
    """
    from safetensors.numpy import load

    f = Path(path) / name
    if not f.exists() and not f.is_symlink():
        if required:
            raise ModelError(f"{path}: {name} is missing")
        return None
    try:
        data = read_regular(f)
    except FileProblem as e:
        raise ModelError(f"{path}: {name}: {e}") from None
    verified_digest(path, name, meta, data)
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - a corrupt weights file, in words
        raise ModelError(f"{path}: cannot read {name}: {e}") from None


def expect_shapes(where: str, arrays: Mapping[str, np.ndarray],
                  shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise unless ``arrays`` has exactly the keys of ``shapes``, each of that shape,
    numeric and finite (``-1`` in a shape: any size >= 1).

    Raises:
        ModelError: naming ``where`` (the file), the key, the expected and found shape.
    """
    if set(arrays) != set(shapes):
        raise ModelError(f"{where}: expected arrays {sorted(shapes)}, found {sorted(arrays)}")
    for key, shape in shapes.items():
        a = arrays[key]
        ok = a.ndim == len(shape) and all(s == -1 and n >= 1 or s == n
                                          for s, n in zip(shape, a.shape))
        if not ok:
            want = "(" + ", ".join("any" if s == -1 else str(s) for s in shape) + ")"
            raise ModelError(f"{where}: {key} must have shape {want}, found {a.shape}")
        if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise ModelError(f"{where}: {key} must hold finite numbers")
