"""Tapped backbones (private): an EfficientNet whose feature row is its final pooled
features followed by the mean-pooled outputs of some of its intermediate blocks.

Intermediate features carry what images far from ImageNet need (Head2Toe, Evci et al.,
ICML 2022); the linear head weighs them by cross-validation (see
:class:`headstart.heads.LinearHead`). The pooling costs next to nothing: the blocks run
anyway. See :meth:`headstart.backbones.Backbone.with_taps`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TAPS", "tap_widths", "tapped_model"]

# The blocks tapped: the last four of the seven (strides 16 and 32). On the far-from-
# ImageNet shared sets (5 and 20 shots) they beat the last three or the last two; adding
# block 2 (stride 8) cost half a point at 5 shots.
TAPS = (3, 4, 5, 6)
# Output channels of each block of the architectures that can be tapped
_BLOCK_WIDTHS = {
    "tf_efficientnet_lite0": (16, 24, 40, 80, 112, 192, 320),
    "tf_efficientnet_lite1": (16, 24, 40, 80, 112, 192, 320),
    "tf_efficientnet_lite2": (16, 24, 48, 88, 120, 208, 352),
}


def tap_widths(timm_name: str, taps: tuple[int, ...] = TAPS) -> tuple[int, ...]:
    """The widths of the pooled ``taps`` of ``timm_name``; empty when it cannot be tapped
    there (another architecture, or a block it does not have)."""
    widths = _BLOCK_WIDTHS.get(timm_name, ())
    ok = all(isinstance(i, int) and 0 <= i < len(widths) for i in taps)
    return tuple(widths[i] for i in taps) if widths and ok else ()


def tapped_model(model: Any, taps: tuple[int, ...], widths: tuple[int, ...]) -> Any:
    """A ``torch.nn.Module`` sharing ``model``'s layers (the same ``state_dict`` keys):
    ``(N, 3, S, S) -> (N, D + sum(widths))``, the final pooled features then the
    mean-pooled outputs of blocks ``taps`` (``widths``: theirs, from :func:`tap_widths`)."""
    import torch

    class Tapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.taps = tuple(taps)
            self.num_features = int(model.num_features) + sum(widths)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn1(self.conv_stem(x))
            pooled = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in self.taps:
                    pooled.append(x.mean((2, 3)))
            x = self.bn2(self.conv_head(x))
            return torch.cat([x.mean((2, 3)), *pooled], dim=1)

    return Tapped().eval().requires_grad_(False)
