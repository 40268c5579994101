"""Load a trained detector from any supported checkpoint, or an exported .onnx/.pt2, and run it on plain images.

A detector is anything that maps normalised images [B, 3, 300, 300] to ssdfast Detections and knows its
`device`: an exported file (ssdfast.deploy.deployed.Deployed, its DetectionPolicy bound when loaded) or a PyTorch
SSD with ssdfast.postprocess and a DetectionPolicy (PostProcessed). `as_detector` turns what load_detector gave into one, so
callers never ask which kind of file they hold.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ssdfast.data.coco import COCO_CLASSES
from ssdfast.data.transforms import SSDTransform
from ssdfast.defaults import DETECTION_POLICY, DISPLAY_POLICY, DetectionPolicy
from ssdfast.machinery.checkpoint import checkpoint_metadata, load_checkpoint, load_model_weights, model_state_dict
from ssdfast.machinery.runtime import autocast, unwrap
from ssdfast.models import SSDBase, build_model
from ssdfast.models.pretrained import resolve
from ssdfast.postprocess import Detections, postprocess, scale_to_image

if TYPE_CHECKING:
    from ssdfast.deploy.deployed import Deployed


def load_detector(
    weights, device="cpu", *, policy: DetectionPolicy | Mapping[str, float] | None = None
) -> tuple[SSDBase | Deployed, dict]:
    """Model (eval mode, on `device`) and its metadata {"model_name", "num_classes", "category_names",
    "category_ids"} from an ssdfast, older-implementation or NVIDIA checkpoint, or a pretrained name
    (ssdfast/models/pretrained.py: "nvidia-ssd300-coco"); or, for a .onnx/.pt2 written
    by tools/export.py, a ssdfast.deploy.deployed.Deployed, told the policy it will be used with (a DetectionPolicy,
    changes to the file's own, or None: its own; checked against the NMS inside the file). A checkpoint's
    model gets its policy from as_detector."""
    from ssdfast.deploy.deployed import Deployed, is_deployed  # imported here: only exported files need the export code

    weights = resolve(weights, "detector")  # a pretrained name (ssdfast/models/pretrained.py) -> its checked file
    if is_deployed(weights):
        deployed = Deployed(weights, device, policy)
        keys = ("model_name", "num_classes", "category_names", "category_ids")
        return deployed, {**{k: deployed.meta[k] for k in keys}, "epoch": None}
    ckpt = load_checkpoint(weights)
    state = model_state_dict(ckpt, weights)
    meta = checkpoint_metadata(weights, ckpt, state)  # checked key by key, against the weights too
    num_classes = meta["num_classes"]
    model = build_model(meta["model_name"], num_classes=num_classes)
    load_model_weights(model, state, weights)
    if meta["category_names"] is None:  # the older implementation's and NVIDIA's files: COCO, or unnamed
        meta["category_names"] = (
            list(COCO_CLASSES) if num_classes == 80 else [f"class {i}" for i in range(1, num_classes + 1)]
        )
    return model.to(device).eval(), meta


class PostProcessed:
    """A PyTorch SSD (or its DistributedDataParallel wrapper) and ssdfast.postprocess as one detector:
    images [B, 3, 300, 300] -> Detections, with this policy and the model's own box coding
    (anchor_spec.variances); the network runs under autocast when amp_dtype is given. Puts the model in
    eval mode."""

    def __init__(
        self, model: nn.Module, *, policy: DetectionPolicy = DETECTION_POLICY, amp_dtype: torch.dtype | None = None
    ):
        self.model, self.policy, self.amp_dtype = model.eval(), policy, amp_dtype

    @property
    def device(self) -> torch.device:
        return unwrap(self.model).anchors.device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Detections:
        with autocast(self.device, self.amp_dtype):
            locs, confs = self.model(images)
        net = unwrap(self.model)
        return postprocess(locs, confs, net.anchors, net.anchor_spec.variances, self.policy)


def as_detector(model, *, policy: DetectionPolicy = DETECTION_POLICY, amp_dtype: torch.dtype | None = None):
    """`model` as a detector (see the module docstring). A PyTorch SSD gets ssdfast.postprocess with this
    policy; anything else already is a detector (a Deployed applies the policy it was loaded with)."""
    if isinstance(model, nn.Module):
        return PostProcessed(model, policy=policy, amp_dtype=amp_dtype)
    return model


def detect(model, images_rgb: list[np.ndarray], policy: DetectionPolicy = DISPLAY_POLICY) -> list[dict]:
    """Detect objects in RGB uint8 images [H, W, 3] (any sizes) with a model from load_detector.
    A Deployed model applies the policy it was loaded with.

    Returns per image {"boxes": float32 [n, 4] pixel xyxy inside the image, "scores": [n], "labels": int [n] (1..C)}."""
    detector = as_detector(model, policy=policy)
    return run_detector(detector, images_rgb)


@torch.no_grad()
def run_detector(detector, images_rgb: list[np.ndarray]) -> list[dict]:
    """A detector (as_detector) on RGB uint8 images [H, W, 3] (any sizes) -> detect's per-image dicts."""
    transform = SSDTransform(normalised=True)
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    batch = torch.stack([transform(img, *empty)[0] for img in images_rgb]).to(detector.device)
    dets = detector(batch)
    sizes = torch.tensor([img.shape[:2] for img in images_rgb], device=dets.boxes.device)
    # Clipped to the image: decoded offsets are unbounded, so a box near the border can reach past it.
    boxes = scale_to_image(dets.boxes.clamp(0, 1), sizes).float().cpu().numpy()
    out = []
    for i, n in enumerate(dets.counts.tolist()):
        out.append(
            {
                "boxes": boxes[i, :n],
                "scores": dets.scores[i, :n].cpu().numpy(),
                "labels": dets.labels[i, :n].cpu().numpy(),
            }
        )
    return out


def keeping_weaker(detector, floor: float = DETECTION_POLICY.score_threshold):
    """The same detector (as_detector), keeping detections down to score `floor`, or to the lowest its file
    allows (one exported with NMS inside stops at its own threshold): a ScoreCut then cuts them at the
    threshold asked for, and knows the best score it cut. Above that threshold the detections are the
    same (NMS visits boxes by decreasing score, so a weaker box never suppresses a stronger one); the
    cost is NMS over the weaker candidates too."""
    lowest = detector.exported.score_threshold if getattr(detector, "meta", {}).get("with_nms") else 0.0
    policy = detector.policy
    lowered = copy.copy(detector)
    lowered.policy = replace(policy, score_threshold=max(min(policy.score_threshold, floor), lowest))
    return lowered


class ScoreCut:
    """Cuts detections (detect's per-image dicts, sorted by score) at `threshold` and remembers the best
    score it cut, so a run that finds nothing above the threshold can say why, once (note), instead of
    leaving an empty picture that looks like a broken tool."""

    def __init__(self, threshold: float):
        self.threshold, self.kept, self.best_cut = threshold, 0, None

    def __call__(self, det: dict) -> dict:
        keep = det["scores"] > self.threshold  # as the post-processing: a score at the threshold is dropped
        if not keep.all():
            best = float(det["scores"][~keep].max())
            self.best_cut = best if self.best_cut is None else max(self.best_cut, best)
        self.kept += int(keep.sum())
        return {key: value[keep] for key, value in det.items()}

    def note(self) -> str | None:
        """ "0 detections above 0.3; the best scored 0.12" when detections were cut and none kept, else None."""
        if self.kept or self.best_cut is None:
            return None
        shown = math.floor(self.best_cut * 1000) / 1000  # rounded down: 0.2999 is not shown as 0.3
        return f"0 detections above {self.threshold:g}; the best scored {shown:g}"


def to_records(dets: dict, names: list[str]) -> list[dict]:
    """One image's detections (a dict of detect) as JSON records: {"box": pixel xyxy to 0.1 px, "score",
    "label" (1..C), "name"}. names: the category names (label i is names[i - 1])."""
    return [
        {
            "box": [round(float(v), 1) for v in box],
            "score": round(float(s), 4),
            "label": int(l),
            "name": names[int(l) - 1],
        }
        for box, s, l in zip(dets["boxes"], dets["scores"], dets["labels"])
    ]
