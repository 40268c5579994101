"""Are some detections a correct post-processing of given boxes and scores, for SOME order of tied scores?

Two runtimes keep different boxes among tied scores (a young model has many exact ties), and one
different choice cascades through greedy NMS, so detections cannot be compared one to one. Instead
the detections of one image are checked against the reference boxes [A, 4] and scores [A, C] that
``ssdfast.postprocess.select`` starts from: they are a greedy NMS result for some order of the
scores (ties free) if and only if
  1. each detection is a candidate: label, score and box within `tol` of one anchor's, no anchor twice;
  2. each is above the score threshold and among its class's top-k scores (ties with the k-th allowed);
  3. no two kept boxes of one class overlap with IoU > the NMS threshold;
  4. each candidate that must be there (above the threshold and, when max_detections rows are full, the
     weakest kept score; among the top k whatever the order of ties) is kept or covered: a kept box of its class with
     a score at least as high (within `tol`) overlaps it with IoU > the threshold.
(Sufficiency: order tied candidates kept ones first; greedy NMS then keeps exactly these.) Slack:
scores within `tol`, IoU within `iou_slack` of the threshold count either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssdfast.defaults import DetectionPolicy
from ssdfast.reference import box_iou


def match_candidates(
    boxes: Tensor, scores: Tensor, det_boxes: Tensor, det_scores: Tensor, det_labels: Tensor, tol: float
) -> Tensor:
    """Anchor index [K] of each detection (boxes [A, 4], scores [A, C]; detections [K, 4], [K], [K] with
    labels 1..C): the first anchor whose box and label's score are within `tol`; -1 where none is."""
    score_ok = (scores[:, det_labels - 1].T - det_scores[:, None]).abs() <= tol  # [K, A]
    box_ok = (boxes[None, :, :] - det_boxes[:, None, :]).abs().amax(dim=-1) <= tol  # [K, A]
    ok = score_ok & box_ok
    return torch.where(ok.any(dim=1), ok.float().argmax(dim=1), torch.full_like(det_labels, -1))


def nms_problem(
    boxes: Tensor,
    scores: Tensor,
    det_boxes: Tensor,
    det_scores: Tensor,
    det_labels: Tensor,
    *,
    policy: DetectionPolicy,
    tol: float = 1e-4,
    iou_slack: float = 1e-3,
) -> str | None:
    """The first violated condition (module docstring) for one image's K real detections under `policy`, or None."""
    max_det = policy.max_detections
    if len(det_scores) > max_det:
        return f"{len(det_scores)} detections, more than max_det {max_det}"
    anchors = match_candidates(boxes, scores, det_boxes, det_scores, det_labels, tol)
    if (anchors < 0).any():
        j = int((anchors < 0).nonzero()[0])
        return (
            f"detection {j} (label {int(det_labels[j])}, score {float(det_scores[j]):.5f}) is no candidate within {tol}"
        )
    keys = anchors * scores.shape[1] + det_labels - 1
    if keys.unique().numel() < keys.numel():
        return "one candidate box is kept twice"
    full = len(det_scores) >= max_det
    weakest = float(det_scores.min()) if full else 0.0
    for label in range(1, scores.shape[1] + 1):
        problem = _class_problem(
            boxes,
            scores[:, label - 1],
            anchors[det_labels == label],
            label,
            weakest,
            policy,
            tol,
            iou_slack,
        )
        if problem:
            return problem
    return None


def _class_problem(
    boxes: Tensor,
    scores: Tensor,
    kept: Tensor,
    label: int,
    weakest: float,
    policy: DetectionPolicy,
    tol: float,
    iou_slack: float,
) -> str | None:
    """Conditions 2-4 for one class: scores [A] of the class, kept [N] anchor indices kept for it."""
    score_threshold, nms_threshold, topk_per_class = policy.score_threshold, policy.nms_threshold, policy.topk_per_class
    ascending, k, n = scores.sort().values, min(topk_per_class, len(scores)), len(scores)
    if len(kept) and float(scores[kept].min()) <= score_threshold - tol:
        return f"a label {label} detection scores at or below the score threshold {score_threshold}"
    if len(kept) and bool(
        (n - torch.searchsorted(ascending, scores[kept] + tol, right=True) >= k).any()
    ):  # k others above
        return f"a label {label} detection is not among its class's top {topk_per_class} scores"
    overlap = box_iou(boxes[kept], boxes[kept]).fill_diagonal_(0.0)
    if (overlap > nms_threshold + iou_slack).any():
        return (
            f"two label {label} detections overlap with IoU {float(overlap.max()):.4f} > {nms_threshold}: NMS keeps one"
        )
    # Must be there: above the thresholds, and in the top k whatever the order of ties.
    surely_top_k = n - torch.searchsorted(ascending, scores - tol) <= k  # at most k scores >= its own - tol
    must = ((scores > max(score_threshold, weakest) + tol) & surely_top_k).nonzero()[:, 0]
    must = must[~torch.isin(must, kept)]
    if len(must) == 0:
        return None
    covers = (box_iou(boxes[must], boxes[kept]) > nms_threshold - iou_slack) & (
        scores[kept][None, :] >= scores[must][:, None] - tol
    )
    uncovered = ~covers.any(dim=1)
    if uncovered.any():
        a = int(must[uncovered][0])
        return f"a label {label} candidate with score {float(scores[a]):.5f} is missing, and no kept box suppresses it"
    return None
