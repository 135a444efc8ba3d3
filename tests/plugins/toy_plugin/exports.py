"""``torchscript``: the whole model (normalised images -> answers) as a TorchScript file,
the headstart metadata in its extra files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from headstart.backbone.features import normalize
from headstart.deploy.export import ExportFormat, deploy_module, export_metadata


def _write(clf: Any, path: Path) -> None:
    import torch

    size = clf.backbone_.preprocess.size
    traced = torch.jit.trace(deploy_module(clf), torch.zeros(2, 3, size, size),
                             check_trace=False)
    torch.jit.save(traced, str(path),
                   _extra_files={"headstart.json": json.dumps(export_metadata(clf))})


def _run(path: Path, images: np.ndarray, preprocess: Any) -> tuple[np.ndarray, ...]:
    import torch

    module = torch.jit.load(str(path))
    with torch.inference_mode():
        p, s, u = module(torch.from_numpy(normalize(images, preprocess)))
    return p.numpy(), s.numpy(), u.numpy()


def _metadata(path: Path) -> dict[str, Any]:
    import torch

    extra = {"headstart.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    return {k: json.loads(v) for k, v in json.loads(extra["headstart.json"]).items()}


TORCHSCRIPT = ExportFormat("torchscript", ".pt", "TorchScript (a toy plugin format)", _write,
                           _run, _metadata)
