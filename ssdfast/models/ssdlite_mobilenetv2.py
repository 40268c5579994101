"""SSDLite with a MobileNetV2 backbone at 300x300: six heads (a checkpoint's unused seventh is dropped at load).

Feature maps: the 576-channel expansion output inside MobileNetV2 block 14 (19x19), the backbone's
1280-channel output (10x10), and four InvertedResidual extras (5, 3, 2, 1). The 19x19 map is computed
in the forward pass, so the gradient of its head reaches the backbone (a detached map trains worse:
docs/ssd.md section 7). Heads: depthwise 3x3 -> BN -> ReLU6 -> 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual

from ssdfast.anchors import AnchorSpec
from ssdfast.models.ssd_base import SSDBase, load_backbone_weights, xavier_init

HEAD_CHANNELS = (576, 1280, 512, 256, 256, 64)
EXPANDED_BLOCK = 14  # features[14].conv[0] is the 1x1 expansion (96 -> 576) at 19x19


def separable_head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1, groups=in_channels),
        nn.BatchNorm2d(in_channels),
        nn.ReLU6(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


class MobileNetV2Backbone(nn.Module):
    def __init__(self, weights=None):
        super().__init__()
        net = mobilenet_v2(weights=None)
        load_backbone_weights(net, weights, "mobilenet_v2")
        self.feature_extractor = net.features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> (19x19x576 expansion map, 10x10x1280 output)."""
        for i, layer in enumerate(self.feature_extractor):
            if i == EXPANDED_BLOCK:  # stride-2 block, no residual: conv[0] then the rest
                expanded = layer.conv[0](x)
                x = layer.conv[1:](expanded)
            else:
                x = layer(x)
        return expanded, x


class SSDLite300MobileNetV2(SSDBase):
    """SSDLite-MobileNetV2 at 300x300: 3000 anchors (anchors.SSDLITE300); 4,451,764 parameters at 80 classes.
    backbone_weights: a torchvision mobilenet_v2 state dict file, or None (random init)."""

    def __init__(self, anchor_spec: AnchorSpec, num_classes: int = 80, backbone_weights=None):
        super().__init__(num_classes, anchor_spec)
        self.feature_extractor = MobileNetV2Backbone(backbone_weights)
        self.additional_blocks = nn.ModuleList(
            [
                InvertedResidual(1280, 512, stride=2, expand_ratio=0.2),
                InvertedResidual(512, 256, stride=2, expand_ratio=0.25),
                InvertedResidual(256, 256, stride=2, expand_ratio=0.5),
                InvertedResidual(256, 64, stride=2, expand_ratio=0.25),
            ]
        )
        nd = self.anchor_spec.boxes_per_location
        self.loc = nn.ModuleList(separable_head(c, n * 4) for c, n in zip(HEAD_CHANNELS, nd))
        self.conf = nn.ModuleList(separable_head(c, n * (num_classes + 1)) for c, n in zip(HEAD_CHANNELS, nd))
        xavier_init([*self.additional_blocks, *self.loc, *self.conf])

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        expanded, x = self.feature_extractor(x)
        maps = [expanded, x]
        for block in self.additional_blocks:
            x = block(x)
            maps.append(x)
        return maps
