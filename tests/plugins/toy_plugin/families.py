"""ResNets tapped at layer2 and layer3 (timm's ``forward_intermediates`` indices 2, 3),
pooled onto 2 x 2 cells; widths from timm's ``feature_info``."""

from headstart.backbone.taps import Family

RESNET = Family("resnet", ("resnet",), taps=(2, 3), grid=2)
