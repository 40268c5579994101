"""The obvious, slow twins that are not part of ssdfast's own path: the tests' oracles and the benchmarks' baselines.

postprocess_loop is what a user would otherwise run: the older implementation's per-image, per-class post-processing loop.

Not part of ssdfast's own path: it is the oracle of ssdfast.postprocess in the tests and the speed
baseline of the benchmarks, kept out of reference.py so a learner reading that file meets SSD's maths only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssdfast.data.draws import box_iou_np
from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy
from ssdfast.reference import _iou, box_decode


def postprocess_loop(
    locs: Tensor,
    confs: Tensor,
    anchors: Tensor,
    variances: tuple[float, float],
    policy: DetectionPolicy = DETECTION_POLICY,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The older implementation's decode_batch, written the older implementation's way: per image, per class, a while loop of NMS.

    The oracle for ssdfast.postprocess (same arguments) and its speed baseline. Suppresses IoU > policy.nms_threshold (the
    seed suppressed >=; with continuous scores and boxes the two agree).
    Returns, per image, (boxes [n, 4] xyxy, scores [n], labels [n]) sorted by decreasing score.
    """
    results = []
    all_boxes = box_decode(locs, anchors, *variances)
    all_probs = confs.float().softmax(dim=-1)
    for boxes, probs in zip(all_boxes, all_probs):
        out_boxes, out_scores, out_labels = [], [], []
        for c in range(1, probs.shape[1]):
            score = probs[:, c]
            mask = score > policy.score_threshold
            cls_boxes, score = boxes[mask], score[mask]
            order = score.argsort(descending=True)[: policy.topk_per_class]
            kept = []
            while order.numel() > 0:
                best = order[0]
                kept.append(int(best))
                overlap = _iou(cls_boxes[best], cls_boxes[order[1:]])
                order = order[1:][overlap <= policy.nms_threshold]
            out_boxes.append(cls_boxes[kept])
            out_scores.append(score[kept])
            out_labels += [c] * len(kept)
        scores = torch.cat(out_scores) if out_scores else torch.zeros(0, device=locs.device)
        best = scores.argsort(descending=True)[: policy.max_detections]
        labels = torch.tensor(out_labels, dtype=torch.long, device=locs.device)
        results.append((torch.cat(out_boxes)[best], scores[best], labels[best]))
    return results


def valid_crops_loop(crops: np.ndarray, boxes: np.ndarray, min_iou: float, max_iou: float) -> np.ndarray:
    """The obvious twin of valid_crops: one window at a time (the test oracle)."""
    out = np.zeros(len(crops), dtype=bool)
    for i, (x0, y0, x1, y1) in enumerate(crops):
        if not 0.5 <= (x1 - x0) / (y1 - y0) <= 2.0:
            continue
        ious = box_iou_np(boxes, crops[i : i + 1])[0]
        centred = [(x0 < (b[0] + b[2]) / 2 < x1) and (y0 < (b[1] + b[3]) / 2 < y1) for b in boxes]
        out[i] = bool(((ious > min_iou) & (ious < max_iou)).all()) and any(centred)
    return out


def adjust_bcs_reference(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """The obvious twin of adjust_bcs: torchvision's formulas in float32, rounded once at the end."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = np.clip(image.astype(np.float32) * brightness, 0, 255)
    mean = float((img @ weights).mean())
    img = np.clip((img - mean) * contrast + mean, 0, 255)
    gray = (img @ weights)[..., None]
    return np.round(np.clip((img - gray) * saturation + gray, 0, 255)).astype(np.uint8)
