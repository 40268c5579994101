"""Load a trained detector from any supported checkpoint, or an exported .onnx/.pt2, and run it on plain images."""
from __future__ import annotations

import numpy as np
import torch

from .anchors import SSD_DEFAULTS
from .checkpoint import infer_model_name, infer_num_classes, load_checkpoint, load_model_weights, model_state_dict
from .data.coco import COCO_CLASSES
from .data.transforms import SSDTransform
from .deployed import Deployed, is_deployed
from .models import SSDBase, build_model
from .postprocess import postprocess, scale_to_image


def load_detector(weights, device="cpu", *, score_threshold: float | None = None,
                  nms_threshold: float | None = None) -> tuple[SSDBase | Deployed, dict]:
    """Model (eval mode, on `device`) and its metadata {"model_name", "num_classes", "category_names",
    "category_ids"} from an ssdfast, seed or NVIDIA checkpoint; or, for a .onnx/.pt2 written by
    tools/export.py, a ssdfast.deployed.Deployed, told the thresholds it will be used with (None: its own;
    checked against the NMS inside the file)."""
    if is_deployed(weights):
        deployed = Deployed(weights, device, score_threshold=score_threshold, nms_threshold=nms_threshold)
        keys = ("model_name", "num_classes", "category_names", "category_ids")
        return deployed, {**{k: deployed.meta[k] for k in keys}, "epoch": None}
    ckpt = load_checkpoint(weights)
    state = model_state_dict(ckpt, weights)
    name = ckpt.get("model_name") or infer_model_name(state)
    num_classes = ckpt.get("num_classes") or infer_num_classes(state)
    model = build_model(name, num_classes=num_classes)
    load_model_weights(model, state, weights)
    names = ckpt.get("category_names") or (list(COCO_CLASSES) if num_classes == 80 else
                                           [f"class {i}" for i in range(1, num_classes + 1)])
    meta = {"model_name": name, "num_classes": num_classes, "category_names": list(names),
            "category_ids": ckpt.get("category_ids"), "epoch": ckpt.get("epoch")}
    return model.to(device).eval(), meta


@torch.no_grad()
def detect(model: SSDBase | Deployed, images_rgb: list[np.ndarray], score_threshold: float = 0.3,
           nms_threshold: float = SSD_DEFAULTS.nms_threshold, max_det: int = SSD_DEFAULTS.max_detections) -> list[dict]:
    """Detect objects in RGB uint8 images [H, W, 3] (any sizes). score_threshold is for showing
    detections (0.3), not the low evaluation threshold of SSD_DEFAULTS, which keeps weak detections for AP.
    A Deployed model applies the thresholds it was loaded with (load_detector) and its own max_det.

    Returns per image {"boxes": float [n, 4] pixel xyxy, "scores": [n], "labels": int [n] (1..C)}."""
    device = model.device if isinstance(model, Deployed) else model.anchors.device
    transform = SSDTransform(train=False, normalised=True)
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    batch = torch.stack([transform(img, *empty, rng=None)[0] for img in images_rgb]).to(device)
    if isinstance(model, Deployed):
        dets = model(batch)
    else:
        locs, confs = model(batch)
        dets = postprocess(locs, confs, model.anchors, score_threshold=score_threshold, nms_threshold=nms_threshold,
                           max_det=max_det)
    sizes = torch.tensor([img.shape[:2] for img in images_rgb], device=device)
    boxes = scale_to_image(dets.boxes, sizes).cpu().numpy()
    out = []
    for i, n in enumerate(dets.counts.tolist()):
        out.append({"boxes": boxes[i, :n], "scores": dets.scores[i, :n].cpu().numpy(),
                    "labels": dets.labels[i, :n].cpu().numpy()})
    return out
