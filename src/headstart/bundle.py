"""The model directory on disk: written atomically, read back with clear errors.

A bundle is a folder of ``headstart.json`` (metadata) and named safetensors files, plus
optional plain files copied in (an OpenVINO IR, ``metrics.csv``). It is written to a
temporary sibling folder and renamed into place, so a crash never leaves a half-written
model, and an existing folder that is not a headstart model is never replaced. No pickle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ModelError

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_FILE", "read_arrays", "read_meta",
           "write_bundle"]

logger = logging.getLogger(__name__)

MODEL_FILE = "headstart.json"
FORMAT = "headstart-model"
FORMAT_VERSION = 1


def write_bundle(path: str | os.PathLike, meta: dict[str, Any],
                 arrays: dict[str, dict[str, np.ndarray]],
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``meta`` as ``headstart.json``, each ``arrays[name]`` as ``name`` (safetensors),
    and whatever ``extra(tmp_folder)`` adds, then move the folder into place.

    Raises:
        ModelError: ``path`` exists and is neither a headstart model nor an empty folder.
    """
    from safetensors.numpy import save_file

    out = Path(path)
    if out.exists() and not (out.is_dir() and ((out / MODEL_FILE).is_file()
                                               or not any(out.iterdir()))):
        raise ModelError(f"--out: {out} exists and is not a headstart model directory; "
                         "choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
        (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for name, tensors in arrays.items():
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                      str(tmp / name))
        if extra is not None:
            extra(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved model to %s", out)
    return out


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``headstart.json`` of a model directory, checked for format and version.

    Raises:
        ModelError: missing directory, not a headstart model, or a newer format.
    """
    d = Path(path)
    if not d.is_dir():
        raise ModelError(f"model directory not found: {d}")
    try:
        meta = json.loads((d / MODEL_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{d} is not a headstart model ({MODEL_FILE}: {e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version", 99) > FORMAT_VERSION:
        raise ModelError(f"{d}: unsupported model format {meta.get('format')!r} "
                         f"version {meta.get('format_version')!r}")
    return meta


def read_arrays(path: str | os.PathLike, name: str, required: bool = True
                ) -> dict[str, np.ndarray] | None:
    """The arrays of safetensors file ``name`` in a model directory (None if optional and
    missing).

    Raises:
        ModelError: a required file is missing, or any file is corrupt.
    """
    from safetensors.numpy import load_file

    f = Path(path) / name
    if not f.is_file():
        if required:
            raise ModelError(f"{path}: {name} is missing")
        return None
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 - a corrupt weights file, in words
        raise ModelError(f"{path}: cannot read {name}: {e}") from None
