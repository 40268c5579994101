"""Checkpoints: round trip, corruption, and the older implementation's / NVIDIA's layouts giving the same detections."""

import math

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet50
from torchvision.models.mobilenetv2 import InvertedResidual

from ssdfast.anchors import SSD300_RESNET50, SSDLITE300, default_boxes
from ssdfast.inference import load_detector
from ssdfast.machinery.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    model_state_dict,
    save_checkpoint,
)
from ssdfast.models import build_model


# ------------------------------------------------ the older implementation's layout, written here from docs/ssd.md and the older implementation's module names
def seed_bbox_view(model, feed, x):
    """The older implementation's forward tail: run the extra blocks on x, then view each head's [B, nd*k, H, W] output as
    [B, k, nd*H*W] and concatenate -> locs [B, 4, A], confs [B, C+1, A]."""
    for block in model.additional_blocks:
        x = block(x)
        feed.append(x)
    locs = [l(f).view(f.size(0), 4, -1) for f, l in zip(feed, model.loc)]
    confs = [c(f).view(f.size(0), model.num_classes, -1) for f, c in zip(feed, model.conf)]
    return torch.cat(locs, 2).contiguous(), torch.cat(confs, 2).contiguous()


class SeedResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.out_channels = [1024, 512, 512, 256, 256, 256]
        self.feature_extractor = nn.Sequential(*list(resnet50(weights=None).children())[:7])
        block = self.feature_extractor[-1][0]
        block.conv1.stride, block.conv2.stride, block.downsample[0].stride = (1, 1), (1, 1), (1, 1)

    def forward(self, x):
        return self.feature_extractor(x)


class SeedSSD(nn.Module):
    """Outputs the older implementation's layout: locs [B, 4, A], confs [B, C+1, A]."""

    def __init__(self, num_classes=81):
        super().__init__()
        self.feature_extractor = SeedResNet()
        self.num_classes = num_classes
        channels = self.feature_extractor.out_channels
        blocks = []
        for i, (cin, cout, mid) in enumerate(zip(channels[:-1], channels[1:], [256, 256, 128, 128, 128])):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, mid, 1, bias=False),
                    nn.BatchNorm2d(mid),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(mid, cout, 3, padding=1 if i < 3 else 0, stride=2 if i < 3 else 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
        self.additional_blocks = nn.ModuleList(blocks)
        self.loc = nn.ModuleList(nn.Conv2d(c, nd * 4, 3, padding=1) for nd, c in zip([4, 6, 6, 6, 4, 4], channels))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, nd * num_classes, 3, padding=1) for nd, c in zip([4, 6, 6, 6, 4, 4], channels)
        )

    def forward(self, x):
        x = self.feature_extractor(x)
        return seed_bbox_view(self, [x], x)


class SeedSSDLite(nn.Module):
    """The older implementation's SSDLite: a forward hook on block 14's expansion, 7 heads (the last unused)."""

    def __init__(self, num_classes=81):
        super().__init__()
        self.num_classes = num_classes
        self.feature_extractor = nn.Module()
        self.feature_extractor.feature_extractor = mobilenet_v2(weights=None).features
        self._tap = {}
        self.feature_extractor.feature_extractor[14].conv[0][2].register_forward_hook(
            lambda m, i, o: self._tap.__setitem__(0, o)
        )
        self.additional_blocks = nn.ModuleList(
            [
                InvertedResidual(1280, 512, 2, 0.2),
                InvertedResidual(512, 256, 2, 0.25),
                InvertedResidual(256, 256, 2, 0.5),
                InvertedResidual(256, 64, 2, 0.25),
            ]
        )

        def heads(out):
            layers = [
                nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(), nn.Conv2d(c, 6 * out, 1)
                )
                for c in [576, 1280, 512, 256, 256, 64]
            ]
            return nn.ModuleList(layers + [nn.Conv2d(64, 6 * out, 1)])

        self.loc, self.conf = heads(4), heads(num_classes)

    def forward(self, x):
        x = self.feature_extractor.feature_extractor(x)
        return seed_bbox_view(self, [self._tap[0], x], x)


def seed_decode(locs, confs, spec):
    """The older implementation's scale_back_batch (xywh default boxes, scale_xy 0.1, scale_wh 0.2) and softmax."""
    dboxes = default_boxes(spec, "xywh").t()[None]  # [1, 4, A]
    xy = 0.1 * locs[:, :2] * dboxes[:, 2:] + dboxes[:, :2]
    wh = torch.exp(0.2 * locs[:, 2:]) * dboxes[:, 2:]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1).permute(0, 2, 1)
    return boxes, confs.softmax(dim=1).permute(0, 2, 1)


def randomise_batchnorm(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("kind", ["seed_ssd", "nvidia_ssd", "seed_ssdlite"])
def test_foreign_checkpoints_give_the_same_detections(tmp_path, kind):
    torch.manual_seed(0)
    seed_model = (SeedSSDLite() if kind == "seed_ssdlite" else SeedSSD()).eval()
    randomise_batchnorm(seed_model)
    state = seed_model.state_dict()
    if kind == "nvidia_ssd":
        ckpt = {
            "model": {f"module.{k}": v for k, v in state.items()},
            "epoch": 64,
            "iteration": 1000,
            "label_map": {i: i for i in range(80)},
        }
    else:
        ckpt = {"epoch": 53, "model_state_dict": state, "optimizer": {}, "scheduler": {}}
    path = tmp_path / "foreign.pt"
    torch.save(ckpt, path)

    model, meta = load_detector(path)
    assert meta["num_classes"] == 80 and meta["category_names"][0] == "person"
    spec = SSDLITE300 if kind == "seed_ssdlite" else SSD300_RESNET50
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        seed_boxes, seed_scores = seed_decode(*seed_model(x), spec)
        locs, confs = model(x)
    from ssdfast import ops

    torch.testing.assert_close(ops.box_decode(locs, model.anchors), seed_boxes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(confs.softmax(-1), seed_scores, rtol=1e-4, atol=1e-6)


def test_round_trip_and_atomic_save(tmp_path):
    model = build_model("ssdlite", num_classes=3)
    path = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint last.pt to {path.parent}: the folder does not"):
        save_checkpoint(path, {"x": torch.ones(1)})  # a missing (e.g. deleted) folder is an error, not recreated
    path.parent.mkdir()
    save_checkpoint(
        path, {"model": model.state_dict(), "model_name": "ssdlite300_mobilenetv2", "num_classes": 3, "epoch": 4}
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    other = build_model("ssdlite", num_classes=3)
    load_model_weights(other, model_state_dict(load_checkpoint(path)), path)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    loaded, meta = load_detector(path)
    assert meta["epoch"] == 4 and meta["category_names"] == ["class 1", "class 2", "class 3"]


def test_corrupt_and_wrong_checkpoints_give_clear_errors(tmp_path):
    model = build_model("ssdlite", num_classes=3)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": model.state_dict()})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*truncated.pt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(
        CheckpointError, match=r"do not fit SSDLite300MobileNetV2 \(num_classes=5\).*wrong shapes: conf"
    ):
        load_model_weights(build_model("ssdlite", num_classes=5), model_state_dict(load_checkpoint(good)), good)
    with pytest.raises(CheckpointError, match="no model weights found"):
        model_state_dict({"epoch": 3, "optimizer": {}}, "x.pt")


def test_loading_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (math.sqrt, (4,))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
