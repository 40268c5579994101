"""SSD300 with a ResNet-50 backbone (NVIDIA DeepLearningExamples' SSD300).

Backbone: torchvision resnet50 children()[:7] (stem, layer1-3) with layer3's first block made
stride 1, so a 300x300 image gives a 38x38x1024 map. Five extra blocks
(1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU) give 19, 10, 5, 3 and 1. Heads: 3x3 convs.
Parameter names (feature_extractor.feature_extractor.N, additional_blocks.i.j, loc.i, conf.i)
are those of the checkpoints ssdfast loads (NVIDIA's, the older implementation's), so they load as they are.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet50

from ssdfast.anchors import AnchorSpec
from ssdfast.models.ssd_base import SSDBase, load_backbone_weights, xavier_init

OUT_CHANNELS = (1024, 512, 512, 256, 256, 256)
MID_CHANNELS = (256, 256, 128, 128, 128)


class ResNet50Backbone(nn.Module):
    def __init__(self, weights=None):
        super().__init__()
        net = resnet50(weights=None)
        load_backbone_weights(net, weights, "resnet50")
        self.feature_extractor = nn.Sequential(*list(net.children())[:7])
        block = self.feature_extractor[-1][0]  # layer3, first bottleneck: keep 38x38
        block.conv1.stride = (1, 1)
        block.conv2.stride = (1, 1)
        block.downsample[0].stride = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_extractor(x)


def extra_block(in_channels: int, mid: int, out_channels: int, downsample: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(
            mid, out_channels, kernel_size=3, padding=1 if downsample else 0, stride=2 if downsample else 1, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SSD300ResNet50(SSDBase):
    """SSD300-ResNet50: 8732 anchors (anchors.SSD300_RESNET50); 22,894,902 parameters at 80 classes.
    backbone_weights: a torchvision resnet50 state dict file, or None (random init)."""

    def __init__(self, anchor_spec: AnchorSpec, num_classes: int = 80, backbone_weights=None):
        super().__init__(num_classes, anchor_spec)
        self.feature_extractor = ResNet50Backbone(backbone_weights)
        self.additional_blocks = nn.ModuleList(
            extra_block(cin, mid, cout, downsample=i < 3)
            for i, (cin, mid, cout) in enumerate(zip(OUT_CHANNELS[:-1], MID_CHANNELS, OUT_CHANNELS[1:]))
        )
        nd = self.anchor_spec.boxes_per_location
        self.loc = nn.ModuleList(nn.Conv2d(c, n * 4, 3, padding=1) for c, n in zip(OUT_CHANNELS, nd))
        self.conf = nn.ModuleList(nn.Conv2d(c, n * (num_classes + 1), 3, padding=1) for c, n in zip(OUT_CHANNELS, nd))
        xavier_init([*self.additional_blocks, *self.loc, *self.conf])

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        x = self.feature_extractor(x)
        maps = [x]
        for block in self.additional_blocks:
            x = block(x)
            maps.append(x)
        return maps
