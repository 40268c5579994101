"""What both SSD models share: the box/class heads, their output layout, and the anchors.

Subclasses build `self.loc` / `self.conf` (one head per feature map) and define
`feature_maps(x) -> list[Tensor]`.

Head layout: head conv channel = value * nd + shape (nd = boxes per location), the layout of the checkpoints
ssdfast loads (NVIDIA's and the older implementation's reshape [B, nd*4, H, W] with `.view(B, 4, -1)`), so they
load unchanged. ssdfast returns per-anchor rows instead, [B, A, 4] and [B, A, C+1], in anchor order
(map, shape, location), which is what the loss and the post-processing want.
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch
from torch import Tensor, nn

from ssdfast.anchors import AnchorSpec, default_boxes


def flatten_head(out: Tensor, boxes_per_location: int, values: int) -> Tensor:
    """[B, values * nd, H, W] with channel = value * nd + shape  ->  [B, nd * H * W, values]."""
    batch, _, height, width = out.shape
    out = out.reshape(batch, values, boxes_per_location, height, width)
    return out.permute(0, 2, 3, 4, 1).reshape(batch, boxes_per_location * height * width, values)


def xavier_init(modules) -> None:
    """Init of the extra layers and heads, as NVIDIA's SSD300: Xavier-uniform on every weight with dim > 1."""
    for module in modules:
        for param in module.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)


class SSDBase(nn.Module, abc.ABC):
    """Base of the SSD detectors. forward(x [B, 3, 300, 300]) -> (locs [B, A, 4], confs [B, A, C+1])."""

    def __init__(self, num_classes: int, anchor_spec: AnchorSpec):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (not counting background), got {num_classes}")
        self.num_classes = num_classes  # C, without background
        self.anchor_spec = anchor_spec
        # Not persistent: recomputed from the spec, so state dicts keep the keys of the checkpoints ssdfast loads.
        self.register_buffer("anchors", default_boxes(anchor_spec, "xyxy"), persistent=False)

    @abc.abstractmethod
    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The maps the heads read: x [B, 3, 300, 300] -> one [B, C_k, f_k, f_k] per map k, in the
        order of anchor_spec.feature_sizes (SSD300: 38, 19, 10, 5, 3, 1). Each model defines it."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        locs, confs = [], []
        for feature, loc, conf, nd in zip(
            self.feature_maps(x), self.loc, self.conf, self.anchor_spec.boxes_per_location
        ):
            locs.append(flatten_head(loc(feature), nd, 4))
            confs.append(flatten_head(conf(feature), nd, self.num_classes + 1))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


def load_backbone_weights(module: nn.Module, path: str | Path | None, what: str) -> None:
    """Load a torchvision state dict file of the full classifier `module` (what: its name, "resnet50") before
    it is cut up; None keeps the random init. Names ('imagenet', ...) are resolved to files before this
    (ssdfast.models.pretrained.resolve_backbone); ValueError naming the file when it does not fit."""
    if path is None:
        return
    state = read_backbone_file(Path(path), what)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"backbone weights {path} do not fit torchvision's {what}: {' '.join(str(error).split())[:300]}"
        ) from error


def read_backbone_file(path: Path, what: str) -> dict:
    """The state dict in a --backbone-weights file, read as every model file is (a regular file, its zip
    entries CRC-checked and read once, torch given only those; weights_only: no code runs); ValueError
    naming it."""
    from ssdfast.machinery.checkpoint import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError as error:  # not a zip, truncated, corrupted, pickled code refused by weights_only...
        raise ValueError(
            f"cannot read the backbone weights {path}: {error} (expected a torchvision {what} state dict saved "
            "with torch.save)"
        ) from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"the backbone weights {path} hold a {type(state).__name__}, not a {what} state dict")
    return state
