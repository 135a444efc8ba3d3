"""timm's pretrained weights on the Hugging Face Hub (private): the local cache first, a
download only when the Hub answers, and a clear error offline instead of a retry loop."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ..errors import BackboneError

__all__ = ["hub_cached_file", "hub_id", "hub_weights_file"]


def hub_id(timm_name: str) -> str | None:
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except Exception:  # noqa: BLE001 - unknown tags raise various errors
        cfg = None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def hub_cached_file(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str):
            return hit
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers a TCP connection (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_weights_file(name: str) -> tuple[str, str]:
    """Path of the timm pretrained weights for ``name`` (cache, else download) and its id."""
    repo = hub_id(name)
    if repo is None:
        raise BackboneError(f"timm has no downloadable weights for {name!r}; pass a local "
                            "file with {weights} FILE", param="backbone", mentions=("weights",))
    path = hub_cached_file(repo)
    if path is None:
        if not hub_reachable():
            raise BackboneError(
                f"the pretrained weights of {name!r} must be downloaded once from the "
                f"Hugging Face Hub ({repo}), which cannot be reached. Connect to the "
                "internet, or pass a local file with {weights} FILE, or use an offline "
                "backbone such as efficientnet_lite0 (see 'headstart backbones').",
                param="backbone", mentions=("weights",))
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(repo, "model.safetensors")
        except Exception:  # noqa: BLE001 - older repos only have the .bin file
            path = hf_hub_download(repo, "pytorch_model.bin")
    return path, f"hub:{repo}"
