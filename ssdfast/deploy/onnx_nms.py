"""SSD post-processing written for ONNX: NMS as the standard ``NonMaxSuppression`` operator.

``ssdfast.postprocess`` calls the ``ssdfast::batched_nms_padded`` kernel, which no ONNX runtime knows.
This module computes the same detections (docs/ssd.md section 5) from plain tensor ops plus one op,
``ssdfast_onnx::non_max_suppression``, that the ONNX exporter writes as ONNX's NonMaxSuppression, so
ONNX Runtime, OpenVINO and TensorRT run the exported graph without plugins.

Why a torch.library custom op and the dynamo exporter (``torch.onnx.export(dynamo=True)``): the op's
eager kernel below follows ONNX's NonMaxSuppression semantics (so the module runs, and is tested, in
PyTorch), its fake kernel gives the data-dependent output length, and ``ONNX_TRANSLATIONS`` maps it to
onnxscript's ``op.NonMaxSuppression``: one node, nothing to patch in the exported graph. (torchvision's
own ONNX symbolic exists only for the deprecated TorchScript exporter, and it emits one NMS per image
and class.)

How ONNX NMS is made to match ssdfast's post-processing:
  * per-class top-k: ONNX NMS has no pre-NMS top-k, so scores below each class's k-th best score are
    set to -1 (never above a score threshold >= 0) before NMS; ties with the k-th score aside, the
    candidates are the same;
  * the thresholds: ONNX suppresses IoU > iou_threshold and keeps score > score_threshold, as ssdfast;
  * best ``max_detections`` overall: NMS keeps up to k boxes per class; the kept entries are scattered into
    a [B, C, A] mask and the best max_detections masked scores per image are taken with topk.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from ssdfast import reference
from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy
from ssdfast.postprocess import Detections


@torch.library.custom_op("ssdfast_onnx::non_max_suppression", mutates_args=())
def non_max_suppression(
    boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float, score_threshold: float
) -> Tensor:
    """ONNX NonMaxSuppression (center_point_box = 0): boxes [B, N, 4] xyxy, scores [B, C, N] ->
    selected [M, 3] int64 rows (image, class, box); per image and class, boxes with score >
    score_threshold, greedy by decreasing score, suppressing IoU > iou_threshold, at most max_per_class."""
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = (scores[b, c] > score_threshold).nonzero()[:, 0]
            keep = candidates[
                torchvision.ops.nms(boxes[b, candidates].float(), scores[b, c, candidates].float(), iou_threshold)
            ][:max_per_class]
            selected.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.long)


@non_max_suppression.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.long)


def _onnx_translation():
    """{the custom op: its onnxscript translation}, for torch.onnx.export(custom_translation_table=...)."""
    from onnxscript import opset18 as op  # the exporter's dependency, imported only when exporting

    def onnx_non_max_suppression(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        return op.NonMaxSuppression(
            boxes,
            scores,
            op.Constant(value_ints=[max_per_class]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
            center_point_box=0,
        )

    return {torch.ops.ssdfast_onnx.non_max_suppression.default: onnx_non_max_suppression}


def postprocess_onnx(
    locs: Tensor,
    confs: Tensor,
    anchors: Tensor,
    variances: tuple[float, float],
    policy: DetectionPolicy = DETECTION_POLICY,
) -> Detections:
    """``ssdfast.postprocess.postprocess`` with ONNX NMS, the same arguments: locs [B, A, 4], confs [B, A, C+1]
    -> Detections (boxes [B, K, 4], scores [B, K], labels [B, K], counts [B]; K = policy.max_detections)."""
    boxes = reference.box_decode(locs, anchors, *variances)  # [B, A, 4], plain tensor ops (no custom op to export)
    probs = confs.float().softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, C, A]
    batch, num_classes, num_anchors = probs.shape
    k, max_det = policy.topk_per_class, policy.max_detections
    kth = probs.topk(min(k, num_anchors), dim=-1).values[..., -1:]  # [B, C, 1]
    # -1 is below every threshold a DetectionPolicy allows (>= 0): masked scores are never candidates.
    probs = torch.where(probs >= kth, probs, torch.full_like(probs, -1.0))
    selected = non_max_suppression(boxes, probs, k, policy.nms_threshold, policy.score_threshold)  # [M, 3]
    # Kept entries as a flat [B * C * A] mask: a scatter, not an index_put, exports to one ScatterElements.
    flat = (selected[:, 0] * num_classes + selected[:, 1]) * num_anchors + selected[:, 2]
    kept = torch.zeros(batch * num_classes * num_anchors, dtype=probs.dtype, device=probs.device)
    kept = kept.scatter(0, flat, torch.ones_like(flat, dtype=probs.dtype)).reshape(batch, num_classes * num_anchors)
    masked = torch.where(kept > 0, probs.reshape(batch, -1), torch.full_like(kept, -1.0))
    scores, index = masked.topk(max_det, dim=-1)  # [B, K], best first
    counts = kept.sum(dim=-1).long().clamp(max=max_det)  # [B]
    real = torch.arange(max_det, device=probs.device)[None, :] < counts[:, None]  # [B, K]
    box_index = (index % num_anchors)[..., None].expand(-1, -1, 4)
    return Detections(
        boxes=boxes.gather(1, box_index) * real[..., None],
        scores=scores * real,
        labels=(index // num_anchors + 1) * real,
        counts=counts,
    )
