"""Backbone families and tapped backbones: a network whose feature row is its final pooled
features followed by the outputs of some of its intermediate blocks, each average-pooled
onto a ``grid x grid`` layout of cells (``grid`` 1: the plain mean over the map).

Intermediate features carry what images far from ImageNet need (Head2Toe, Evci et al.,
ICML 2022), and their layout carries what the final, position-free mean loses (where the
stroke of a digit is, where in a blood smear the nucleus lies); the linear head weighs
them by cross-validation (see :class:`headstart.heads.LinearHead`). The pooling costs next
to nothing: the blocks run anyway.

Which architectures can be tapped, and where, is one registry, :data:`BACKBONE_FAMILIES`
(entry-point group ``headstart.backbones`` for plugins): a :class:`Family` names the timm
architectures it covers and the blocks tapped by default; the intermediate outputs come
from timm's ``forward_intermediates`` and their widths from ``feature_info`` (or a table),
so any timm CNN family can be registered without code of its own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry

__all__ = ["BACKBONE_FAMILIES", "TAP_GRID", "Family", "family_of", "grid_pool", "tap_widths",
           "tapped_model"]

# The grid each tapped block is pooled onto (see benchmarks/README.md, "tapped blocks").
TAP_GRID = 3


@dataclass(frozen=True)
class Family:
    """Timm architectures whose intermediate outputs can be tapped.

    Args:
        name: the family's name (the registry key).
        prefixes: the timm names it covers (a name starting with one of them).
        taps: the blocks tapped by default, numbered as ``forward_intermediates`` numbers
            them minus ``offset``.
        grid: cells a side each tapped output is pooled onto.
        extra_blocks: pass ``extra_blocks=True`` to ``forward_intermediates`` (EfficientNet:
            every block, not only the stage ends of ``feature_info``).
        offset: ``forward_intermediates`` index of tap 0 (1 when index 0 is the stem).
        widths: known output channels of each tap number, by timm name (no model is built
            to learn them); others come from the model's ``feature_info`` (required for
            ``extra_blocks``, which ``feature_info`` does not describe).
    """

    name: str
    prefixes: tuple[str, ...]
    taps: tuple[int, ...]
    grid: int = TAP_GRID
    extra_blocks: bool = False
    offset: int = 0
    widths: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def covers(self, timm_name: str) -> bool:
        return timm_name.startswith(self.prefixes)

    def channels(self, timm_name: str) -> tuple[int, ...]:
        """Output channels of each tap number of ``timm_name`` (empty when unknown)."""
        if timm_name in self.widths:
            return self.widths[timm_name]
        return () if self.extra_blocks else _feature_channels(timm_name)

    def indices(self, taps: tuple[int, ...]) -> list[int]:
        """``forward_intermediates`` indices of ``taps``."""
        return [t + self.offset for t in taps]


@functools.lru_cache(maxsize=16)
def _feature_channels(timm_name: str) -> tuple[int, ...]:
    """Channels of timm's ``feature_info`` of ``timm_name`` (a model built without weights)."""
    import timm

    try:
        info = timm.create_model(timm_name, pretrained=False).feature_info
        return tuple(int(i["num_chs"]) for i in info)
    except Exception:  # noqa: BLE001 - an architecture without feature_info: not tappable
        return ()


def _check(entry: object) -> None:
    if not isinstance(entry, Family):
        raise TypeError(f"a backbone family is a headstart.backbone.taps.Family, got {entry!r}")


BACKBONE_FAMILIES: Registry[Family] = Registry("backbone family", "headstart.backbones",
                                               name_of=lambda f: f.name, check=_check)
# Blocks 4-6 (strides 16 and 32) on 3 x 3 cells (see benchmarks/README.md).
_LITE = (16, 24, 40, 80, 112, 192, 320)
BACKBONE_FAMILIES.register(Family(
    "efficientnet", ("tf_efficientnet_lite", "efficientnet_lite"), taps=(4, 5, 6),
    extra_blocks=True, offset=1,
    widths={"tf_efficientnet_lite0": _LITE, "tf_efficientnet_lite1": _LITE,
            "tf_efficientnet_lite2": (16, 24, 48, 88, 120, 208, 352)}))


def family_of(timm_name: str) -> Family | None:
    """The registered family covering ``timm_name`` (the last registered wins), or None."""
    found = [f for f in BACKBONE_FAMILIES if f.covers(timm_name)]
    return found[-1] if found else None


def tap_widths(timm_name: str, taps: tuple[int, ...] | None = None, grid: int | None = None
               ) -> tuple[int, ...]:
    """The widths of ``taps`` (default: the family's) of ``timm_name`` pooled onto ``grid x
    grid`` cells (channels times cells); empty when it cannot be tapped there (no family,
    a block it does not have, a grid below 1)."""
    family = family_of(timm_name)
    if family is None:
        return ()
    taps = family.taps if taps is None else taps
    grid = family.grid if grid is None else grid
    widths = family.channels(timm_name)
    ok = all(isinstance(i, int) and 0 <= i < len(widths) for i in taps) and \
        isinstance(grid, int) and grid >= 1
    return tuple(widths[i] * grid * grid for i in taps) if widths and ok else ()


def grid_pool(x: Any, grid: int) -> Any:
    """``(N, C, H, W) -> (N, C * grid * grid)``: the mean of each of ``grid x grid`` cells,
    channel-major, with the cells of ``torch.nn.functional.adaptive_avg_pool2d`` (which
    ONNX cannot export when ``grid`` does not divide the map), by static slices."""
    import torch

    if grid == 1:
        return x.mean((2, 3))
    h, w = int(x.shape[2]), int(x.shape[3])
    rows = [(i * h // grid, -(-(i + 1) * h // grid)) for i in range(grid)]
    cols = [(j * w // grid, -(-(j + 1) * w // grid)) for j in range(grid)]
    cells = [x[:, :, a:b, c:d].mean((2, 3)) for a, b in rows for c, d in cols]
    return torch.stack(cells, dim=2).flatten(1)


def tapped_model(model: Any, taps: tuple[int, ...], widths: tuple[int, ...],
                 grid: int = 1, timm_name: str = "") -> Any:
    """A ``torch.nn.Module`` sharing ``model``'s layers (the same ``state_dict`` keys):
    ``(N, 3, S, S) -> (N, D + sum(widths))``, the final pooled features then the outputs
    of blocks ``taps`` (from ``forward_intermediates``) pooled by :func:`grid_pool`
    (``widths``: theirs, from :func:`tap_widths` with the same ``grid``)."""
    import torch

    family = family_of(timm_name or getattr(model, "default_cfg", {}).get("architecture", ""))
    if family is None:
        raise ValueError(f"no registered backbone family covers {timm_name!r}")
    kwargs = {"extra_blocks": True} if family.extra_blocks else {}

    class Tapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.__dict__["inner"] = model  # not a submodule: the state_dict keys stay
            self.indices, self.grid = family.indices(tuple(taps)), int(grid)
            self.num_features = int(model.num_features) + sum(widths)

        def train(self, mode: bool = True) -> "Tapped":
            self.inner.training = mode
            return super().train(mode)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x, inner = self.inner.forward_intermediates(x, indices=self.indices, **kwargs)
            pooled = [grid_pool(t, self.grid) for t in inner]
            return torch.cat([x.mean((2, 3)), *pooled], dim=1)

    return Tapped().eval().requires_grad_(False)
