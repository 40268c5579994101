"""SSD's box coding and matching in plain PyTorch (for learners: read this, not csrc/, first), which is
also the twin of every compiled ssdfast op: the test oracle, and the fallback when ``ssdfast._C`` is
missing or has no kernel for a device.

Each function has the same semantics as its C++/CUDA kernel (see ``csrc/``), written for clarity.
Box maths follows the same float operation order as ``csrc/box_math.h``, so IoUs are bit-identical
and matching decisions agree exactly, ties included. The compiled ops check shapes, dtypes and devices
(csrc/checks.h); the twins check the two things whose answer would otherwise differ between backends:
boxes must be floating point, and matching needs at least one anchor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssdfast.anchors import SSD_DEFAULTS


def _check_float(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise RuntimeError(
            f"ssdfast: {name} must be a floating point tensor (float32, float16, bfloat16 or float64), got {t.dtype}"
        )


def _check_anchors(anchors: Tensor) -> None:
    _check_float(anchors, "anchors")
    if anchors.shape[0] == 0:
        raise RuntimeError("ssdfast: anchors must hold at least one box to match against, got A = 0")


def _area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcastable xyxy boxes a [..., 4] and b [..., 4] -> [...]; 0 where the union is empty."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = _area(a) + _area(b) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU: boxes1 [N, 4], boxes2 [M, 4] (xyxy) -> [N, M] float32."""
    _check_float(boxes1, "boxes1"), _check_float(boxes2, "boxes2")
    return _iou(boxes1.float()[:, None, :], boxes2.float()[None, :, :])


def _center_size(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (b[..., 0] + b[..., 2]) * 0.5, (b[..., 1] + b[..., 3]) * 0.5, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]


def box_encode(
    boxes: Tensor,
    anchors: Tensor,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> Tensor:
    """xyxy boxes [..., A, 4] relative to anchors [A, 4] (xyxy) -> SSD offsets [..., A, 4] float32."""
    _check_float(boxes, "boxes"), _check_float(anchors, "anchors")
    gcx, gcy, gw, gh = _center_size(boxes.float())
    acx, acy, aw, ah = _center_size(anchors.float())
    return torch.stack(
        [
            (gcx - acx) / aw / center_variance,
            (gcy - acy) / ah / center_variance,
            torch.log(gw / aw) / size_variance,
            torch.log(gh / ah) / size_variance,
        ],
        dim=-1,
    )


def box_decode(
    offsets: Tensor,
    anchors: Tensor,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> Tensor:
    """SSD offsets [..., A, 4] relative to anchors [A, 4] (xyxy) -> xyxy boxes [..., A, 4] float32."""
    _check_float(offsets, "offsets"), _check_float(anchors, "anchors")
    t = offsets.float()
    acx, acy, aw, ah = _center_size(anchors.float())
    cx = t[..., 0] * center_variance * aw + acx
    cy = t[..., 1] * center_variance * ah + acy
    w = torch.exp(t[..., 2] * size_variance) * aw
    h = torch.exp(t[..., 3] * size_variance) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def match(gt_boxes: Tensor, gt_mask: Tensor, anchors: Tensor, iou_threshold: float = SSD_DEFAULTS.match_iou) -> Tensor:
    """SSD matching (docs/ssd.md section 2), batched.

    Args:
        gt_boxes: [B, G, 4] xyxy ground truth, padded.
        gt_mask: [B, G] bool, True for real boxes.
        anchors: [A, 4] xyxy default boxes.
    Returns:
        [B, A] int64: index of the matched ground truth per anchor, -1 for background.
    """
    _check_float(gt_boxes, "gt_boxes"), _check_anchors(anchors)
    B, G = gt_mask.shape
    A = anchors.shape[0]
    if G == 0:
        return torch.full((B, A), -1, dtype=torch.long, device=gt_boxes.device)
    iou = _iou(gt_boxes.float()[:, :, None, :], anchors.float()[None, None, :, :])  # [B, G, A]
    iou = iou.masked_fill(~gt_mask[:, :, None], -1.0)
    # Each anchor takes its best ground truth (argmax: first maximum, so the lowest index wins ties).
    anchor_best_gt = iou.argmax(dim=1)  # [B, A]
    anchor_best_iou = iou.gather(1, anchor_best_gt[:, None, :]).squeeze(1)
    # Each valid ground truth claims its best anchor; when several claim one anchor, the last wins.
    gt_best_anchor = iou.argmax(dim=2)  # [B, G]
    target = torch.where(gt_mask, gt_best_anchor, torch.full_like(gt_best_anchor, A))  # invalid -> spare column A
    gt_index = torch.arange(G, device=gt_boxes.device).expand(B, G)
    claim = torch.full((B, A + 1), -1, dtype=torch.long, device=gt_boxes.device)
    # amax over ground-truth indices = the claimant with the highest index = the last one a sequential loop
    # of claims would write (docs/ssd.md section 2). Invalid slots all write to the spare column A, cut off here.
    claim = claim.scatter_reduce(1, target, gt_index, reduce="amax")[:, :A]
    claimed = claim >= 0
    matched = torch.where(claimed, claim, anchor_best_gt)
    best_iou = torch.where(claimed, torch.full_like(anchor_best_iou, 2.0), anchor_best_iou)
    return torch.where(best_iou > iou_threshold, matched, torch.full_like(matched, -1))


def match_encode(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    anchors: Tensor,
    iou_threshold: float = SSD_DEFAULTS.match_iou,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> tuple[Tensor, Tensor]:
    """Loss targets in one call: gt_boxes [B, G, 4], gt_labels [B, G] (0 = padding), anchors [A, 4]
    -> (offsets [B, A, 4] float32, zero for background; labels [B, A] int64, 0 for background)."""
    matched = match(gt_boxes, gt_labels > 0, anchors, iou_threshold)
    if gt_boxes.shape[1] == 0:  # no ground-truth slots: every anchor is background (nothing to gather from)
        return (torch.zeros(*matched.shape, 4, device=matched.device), torch.zeros_like(matched))
    positive = matched >= 0
    index = matched.clamp(min=0)
    boxes = gt_boxes.float().gather(1, index[..., None].expand(-1, -1, 4))
    offsets = box_encode(boxes, anchors, center_variance, size_variance)
    offsets = torch.where(positive[..., None], offsets, torch.zeros_like(offsets))
    labels = torch.where(positive, gt_labels.long().gather(1, index), torch.zeros_like(matched))
    return offsets, labels


def _greedy_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, candidates: Tensor, iou_threshold: float, max_output: int
) -> list[int]:
    """Greedy class-aware NMS over `candidates` (indices, already in visiting order)."""
    kept: list[int] = []
    remaining = candidates
    while remaining.numel() > 0 and len(kept) < max_output:
        best, rest = remaining[0], remaining[1:]
        kept.append(int(best))  # host sync: fine for a reference
        overlap = _iou(boxes[best], boxes[rest]) > iou_threshold
        remaining = rest[~(overlap & (classes[rest] == classes[best]))]
    return kept


def batched_nms_padded(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, score_threshold: float, max_output: int
) -> tuple[Tensor, Tensor]:
    """Class-aware NMS per image with a fixed-size output.

    Args:
        boxes: [B, N, 4] xyxy. scores: [B, N]. classes: [B, N] integer class per candidate.
        score_threshold: candidates with score <= this are ignored.
        max_output: K, the output width.
    Returns:
        keep [B, K] int64 (candidate indices by decreasing score, padded with -1), counts [B] int64.
    """
    _check_float(boxes, "boxes"), _check_float(scores, "scores")
    B = boxes.shape[0]
    keep = torch.full((B, max_output), -1, dtype=torch.long, device=boxes.device)
    counts = torch.zeros(B, dtype=torch.long, device=boxes.device)
    for b in range(B):
        s = scores[b].float()
        order = torch.sort(s, descending=True, stable=True).indices
        order = order[s[order] > score_threshold]  # NaN scores fail this test: never kept
        kept = _greedy_nms(boxes[b].float(), s, classes[b], order, iou_threshold, max_output)
        keep[b, : len(kept)] = torch.tensor(kept, dtype=torch.long, device=boxes.device)
        counts[b] = len(kept)
    return keep, counts


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.nms semantics: boxes [N, 4], scores [N] -> kept indices [n] by decreasing score,
    except that a NaN score is never kept (torchvision would rank it first)."""
    _check_float(boxes, "boxes"), _check_float(scores, "scores")
    s = scores.float()
    order = torch.sort(s, descending=True, stable=True).indices
    order = order[~s[order].isnan()]  # a NaN score is never kept (torchvision would rank it first)
    one_class = torch.zeros(len(s), dtype=torch.long, device=boxes.device)
    kept = _greedy_nms(boxes.float(), s, one_class, order, iou_threshold, len(s))
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)
