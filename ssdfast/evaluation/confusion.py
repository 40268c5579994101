"""The confusion matrix of a detector: which objects it found as what, which it missed, and where it saw
objects that are not there.

counts [C+1, C+1] int64: rows are the true class, columns the predicted class, both in label order
(0..C-1: the categories sorted by id, as the datasets number them from 1) with index C = background:
  counts[t, p]  an object of class t detected as class p (t == p: correct);
  counts[t, C]  an object of class t that no detection found (missed);
  counts[C, p]  a detection of class p where there is no object (false detection);
  counts[C, C]  always 0.

Matching, per image, on the detections above a score threshold, each object and each detection used once:
  1. correct: in descending score order, each detection takes the unmatched object of its own class
     with the highest IoU >= iou_threshold (COCOeval's rule at IoU 0.5, so the diagonal is what AP50 counts);
  2. wrong class: in the same order, each detection still unmatched takes the unmatched object of any class
     with the highest IoU >= iou_threshold;
  3. what is left: objects are missed, detections are false, except a detection that lies on a crowd
     region (COCO's iscrowd; its intersection over the detection's own area >= iou_threshold): ignored,
     as COCOeval ignores it.
Cost: one IoU matrix per image and a Python loop over its detections (about 1 s for COCO val at score 0.3).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

IOU_THRESHOLD = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of xyxy boxes a [N, 4] and b [M, 4]."""
    inter = intersection(a, b)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas [N, M] of xyxy boxes a [N, 4] and b [M, 4]."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return (high - low).clip(0).prod(axis=2)


def image_confusion(
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    num_classes: int,
    crowd_boxes: np.ndarray | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> np.ndarray:
    """counts [C+1, C+1] of one image (module docstring): objects gt_boxes [G, 4] (xyxy, any unit) of
    gt_classes [G] (0..C-1); detections det_boxes [D, 4], det_scores [D], det_classes [D] (already cut
    at the score threshold); crowd_boxes [Z, 4] (or None) where detections are ignored."""
    background = num_classes
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    gt_boxes, det_boxes = np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(det_boxes, float).reshape(-1, 4)
    gt_classes, det_classes = np.asarray(gt_classes, int), np.asarray(det_classes, int)
    iou = box_iou(det_boxes, gt_boxes)  # [D, G]
    taken = np.zeros(len(gt_boxes), dtype=bool)
    matched = np.zeros(len(det_boxes), dtype=bool)
    order = np.argsort(-np.asarray(det_scores, float), kind="stable")
    for same_class_only in (True, False):
        for d in order:
            if matched[d]:
                continue
            free = ~taken & (iou[d] >= iou_threshold)
            if same_class_only:
                free &= gt_classes == det_classes[d]
            if free.any():
                g = int(np.where(free, iou[d], -1.0).argmax())
                taken[g] = matched[d] = True
                counts[gt_classes[g], det_classes[d]] += 1
    np.add.at(counts, (gt_classes[~taken], background), 1)
    false = ~matched
    if crowd_boxes is not None and len(crowd_boxes):
        crowd_boxes = np.asarray(crowd_boxes, float).reshape(-1, 4)
        on_crowd = intersection(det_boxes, crowd_boxes) / np.maximum(area(det_boxes), 1e-12)[:, None]
        false &= ~(on_crowd >= iou_threshold).any(axis=1)
    np.add.at(counts, (background, det_classes[false]), 1)
    return counts


def _xyxy(xywh) -> list[float]:
    x, y, w, h = xywh
    return [x, y, x + w, y + h]


def coco_confusion(
    coco_gt,
    results: list[dict],
    category_ids: list[int],
    score_threshold: float,
    image_ids: list[int] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> np.ndarray:
    """counts [C+1, C+1] (module docstring) over the images `image_ids` (default: all of coco_gt) of COCO
    results (evaluation.coco_eval.detections_to_coco) against coco_gt (pycocotools COCO), using the
    detections scored above score_threshold. Class k is category_ids[k]."""
    index = {category: k for k, category in enumerate(category_ids)}
    num_classes = len(category_ids)
    detections = defaultdict(list)
    for result in results:
        if result["score"] > score_threshold and result["category_id"] in index:
            detections[result["image_id"]].append(result)
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_id in sorted(set(coco_gt.getImgIds() if image_ids is None else image_ids)):
        objects = [a for a in coco_gt.imgToAnns.get(image_id, []) if a["category_id"] in index]
        solid = [a for a in objects if not a.get("iscrowd", 0)]
        found = detections.get(image_id, [])
        counts += image_confusion(
            np.array([_xyxy(a["bbox"]) for a in solid]),
            np.array([index[a["category_id"]] for a in solid]),
            np.array([_xyxy(r["bbox"]) for r in found]),
            np.array([r["score"] for r in found]),
            np.array([index[r["category_id"]] for r in found]),
            num_classes,
            crowd_boxes=np.array([_xyxy(a["bbox"]) for a in objects if a.get("iscrowd", 0)]),
            iou_threshold=iou_threshold,
        )
    return counts


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """counts [C+1, C+1] -> each row divided by its sum (the share of each true class's objects that went
    where; the background row: which classes the false detections claimed). A row without counts: zeros."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def most_common_classes(counts: np.ndarray, k: int) -> list[int]:
    """The (at most) k classes 0..C-1 with the most objects, then the most detections, in label order."""
    objects, detections = counts[:-1].sum(axis=1), counts[:, :-1].sum(axis=0)
    ranked = sorted(range(len(objects)), key=lambda c: (-objects[c], -detections[c], c))
    return sorted(ranked[:k])
