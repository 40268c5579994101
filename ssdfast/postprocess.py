"""From network outputs to detections, batched, fixed-size, no host synchronisation.

decode offsets (with the model's anchor_spec.variances) -> softmax -> per class: the top
`policy.topk_per_class` scores -> class-aware NMS that ignores scores <= `policy.score_threshold` and
stops at `policy.max_detections` kept boxes (= the best K by score). The same steps as a Python loop per
image and per class (benchmarks/baselines.postprocess_loop) are the test oracle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ssdfast import ops
from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy


class Detections(NamedTuple):
    boxes: Tensor  # [B, K, 4] xyxy, normalised to [0, 1] (padding: 0)
    scores: Tensor  # [B, K] (padding: 0), decreasing within a row
    labels: Tensor  # [B, K] int64 class 1..C (padding: 0)
    counts: Tensor  # [B] int64: how many entries of each row are real


def postprocess(
    locs: Tensor,
    confs: Tensor,
    anchors: Tensor,
    variances: tuple[float, float],
    policy: DetectionPolicy = DETECTION_POLICY,
) -> Detections:
    """
    Args:
        locs (Tensor[B, A, 4]), confs (Tensor[B, A, C+1]): the model's outputs.
        anchors (Tensor[A, 4]): xyxy default boxes (model.anchors).
        variances: the box coding the model was trained with (model.anchor_spec.variances).
    """
    boxes, probs = decode_scores(locs, confs, anchors, variances)
    return select(boxes, probs, policy)


def decode_scores(
    locs: Tensor, confs: Tensor, anchors: Tensor, variances: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """The first half of :func:`postprocess` (what an export without NMS outputs): locs [B, A, 4],
    confs [B, A, C+1] -> boxes [B, A, 4] xyxy normalised, scores [B, A, C] (softmax, background dropped)."""
    return ops.box_decode(locs, anchors, *variances), confs.float().softmax(dim=-1)[..., 1:]


def select(boxes: Tensor, probs: Tensor, policy: DetectionPolicy = DETECTION_POLICY) -> Detections:
    """The second half of :func:`postprocess`: boxes [B, A, 4], scores [B, A, C] -> Detections."""
    batch, num_anchors, num_classes = probs.shape
    k = min(policy.topk_per_class, num_anchors)
    scores, index = probs.transpose(1, 2).topk(k, dim=-1)  # [B, C, k]
    index = index.reshape(batch, num_classes * k)
    cand_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))  # [B, C*k, 4]
    cand_scores = scores.reshape(batch, num_classes * k)
    cand_labels = torch.arange(1, num_classes + 1, device=boxes.device).repeat_interleave(k).expand(batch, -1)

    keep, counts = ops.batched_nms_padded(
        cand_boxes, cand_scores, cand_labels, policy.nms_threshold, policy.score_threshold, policy.max_detections
    )
    real = keep >= 0
    keep = keep.clamp(min=0)
    return Detections(
        boxes=cand_boxes.gather(1, keep[..., None].expand(-1, -1, 4)) * real[..., None],
        scores=cand_scores.gather(1, keep) * real,
        labels=cand_labels.gather(1, keep) * real,
        counts=counts,
    )


def scale_to_image(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Normalised xyxy boxes [B, K, 4] -> pixel xyxy boxes of each original image.

    image_sizes (Tensor[B, 2]): (height, width) of each original image.
    """
    h, w = image_sizes[:, 0].to(boxes.dtype), image_sizes[:, 1].to(boxes.dtype)
    scale = torch.stack([w, h, w, h], dim=1)[:, None, :]
    return boxes * scale
