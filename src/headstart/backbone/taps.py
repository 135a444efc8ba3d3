"""Tapped backbones (private): an EfficientNet whose feature row is its final pooled
features followed by the outputs of some of its intermediate blocks, each average-pooled
onto a ``grid x grid`` layout of cells (``grid`` 1: the plain mean over the map).

Intermediate features carry what images far from ImageNet need (Head2Toe, Evci et al.,
ICML 2022), and their layout carries what the final, position-free mean loses (where the
stroke of a digit is, where in a blood smear the nucleus lies); the linear head weighs
them by cross-validation (see :class:`headstart.heads.linear.LinearHead`). The pooling costs next
to nothing: the blocks run anyway. See :meth:`headstart.backbone.build.Backbone.with_taps`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TAPS", "TAP_GRID", "tap_widths", "tapped_model"]

# The blocks tapped, and the grid each is pooled onto: blocks 4-6 (strides 16 and 32) on
# 3 x 3 cells. On the five far-from-ImageNet shared sets (benchmarks/kshot.py splits) the
# mean of blocks 3-6 gave +0.8 / +1.1 points over the final features alone at 5 / 20
# images per class; 2 x 2 grids +2.5 / +2.3; 3 x 3 grids of blocks 4-6 +4.4 / +3.0 (of
# blocks 3-6 or 2-6, or with the means besides, no better).
TAPS = (4, 5, 6)
TAP_GRID = 3
# Output channels of each block of the architectures that can be tapped
_BLOCK_WIDTHS = {
    "tf_efficientnet_lite0": (16, 24, 40, 80, 112, 192, 320),
    "tf_efficientnet_lite1": (16, 24, 40, 80, 112, 192, 320),
    "tf_efficientnet_lite2": (16, 24, 48, 88, 120, 208, 352),
}


def tap_widths(timm_name: str, taps: tuple[int, ...] = TAPS, grid: int = TAP_GRID
               ) -> tuple[int, ...]:
    """The widths of ``taps`` of ``timm_name`` pooled onto ``grid x grid`` cells (channels
    times cells); empty when it cannot be tapped there (another architecture, a block it
    does not have, a grid below 1)."""
    widths = _BLOCK_WIDTHS.get(timm_name, ())
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
                 grid: int = 1) -> Any:
    """A ``torch.nn.Module`` sharing ``model``'s layers (the same ``state_dict`` keys):
    ``(N, 3, S, S) -> (N, D + sum(widths))``, the final pooled features then the outputs
    of blocks ``taps`` pooled by :func:`grid_pool` (``widths``: theirs, from
    :func:`tap_widths` with the same ``grid``)."""
    import torch

    class Tapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.taps, self.grid = tuple(taps), int(grid)
            self.num_features = int(model.num_features) + sum(widths)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn1(self.conv_stem(x))
            pooled = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in self.taps:
                    pooled.append(grid_pool(x, self.grid))
            x = self.bn2(self.conv_head(x))
            return torch.cat([x.mean((2, 3)), *pooled], dim=1)

    return Tapped().eval().requires_grad_(False)
