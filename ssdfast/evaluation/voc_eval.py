"""Pascal VOC mAP@0.5 of COCO-format detections, the numbers VOC papers compare: VOC07 (11-point)
and VOC12 (all-point, the area under the monotone precision envelope).

The devkit's protocol (VOCevaldet / Girshick's voc_eval.py), on COCO-format inputs: per class,
detections in descending score order (stable: ties keep their input order); each is matched to the
ground-truth box of its image and class with the highest IoU; IoU > 0.5 with a non-difficult box not
yet taken: true positive; with a difficult box (COCO `iscrowd: 1`, as ssdfast.data.voc stores VOC's
`difficult`): ignored (neither); otherwise a false positive. Recall is over the non-difficult boxes.
Boxes are continuous pixel coordinates (ssdfast.data.voc converts VOC's 1-based inclusive indices),
so the plain IoU here equals the devkit's "+1" IoU on VOC's integer boxes. The mean is over the
classes with at least one non-difficult box among the evaluated images.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

IOU_THRESHOLD = 0.5


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of a precision/recall curve ([n] each, in detection order): VOC07's mean of the best
    precision at recall >= 0, 0.1, ..., 1, or VOC12's area under the monotone envelope."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: best precision at any higher recall
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def iou_xywh(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [4] xywh box with [n, 4] xywh boxes -> [n]."""
    ix = np.clip(np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def precision_recall(truth: dict, detections: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """truth: image_id -> ([n, 4] xywh boxes, [n] difficult flags) of one class; detections: that class's
    results. (recall, precision) in descending score order, or None when the class has no box to find."""
    positives = sum(int((~difficult).sum()) for _, difficult in truth.values())
    if positives == 0:
        return None
    taken = {image_id: np.zeros(len(boxes), bool) for image_id, (boxes, _) in truth.items()}
    tp, fp = np.zeros(len(detections)), np.zeros(len(detections))
    for d, det in enumerate(sorted(detections, key=lambda r: -r["score"])):  # sorted() is stable
        boxes, difficult = truth.get(det["image_id"], (np.zeros((0, 4)), np.zeros(0, bool)))
        overlaps = iou_xywh(np.asarray(det["bbox"], float), boxes) if len(boxes) else np.zeros(0)
        best = int(overlaps.argmax()) if len(overlaps) else -1
        if best < 0 or overlaps[best] <= IOU_THRESHOLD:
            fp[d] = 1
        elif not difficult[best]:
            tp[d], fp[d] = (0, 1) if taken[det["image_id"]][best] else (1, 0)
            taken[det["image_id"]][best] = True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return tp / positives, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)


def voc_map(coco_gt, results: list[dict], image_ids=None) -> dict:
    """{"VOC07": mAP, "VOC12": mAP, "per_class": {name: {"VOC07", "VOC12"}}} at IoU 0.5 of `results`
    (COCO results: image_id, category_id, bbox xywh, score) against `coco_gt` (pycocotools COCO),
    over `image_ids` (default: all of coco_gt)."""
    evaluated = set(coco_gt.getImgIds() if image_ids is None else image_ids)
    truth = defaultdict(lambda: defaultdict(list))  # category -> image -> [(box, difficult)]
    for image_id in evaluated:
        for ann in coco_gt.imgToAnns.get(image_id, []):
            truth[ann["category_id"]][image_id].append((ann["bbox"], bool(ann.get("iscrowd", 0))))
    detections = defaultdict(list)
    for result in results:
        if result["image_id"] in evaluated:
            detections[result["category_id"]].append(result)
    per_class = {}
    for category_id in sorted(coco_gt.cats):
        by_image = {
            i: (np.asarray([b for b, _ in anns], float).reshape(-1, 4), np.asarray([d for _, d in anns]))
            for i, anns in truth[category_id].items()
        }
        curve = precision_recall(by_image, detections[category_id])
        if curve is not None:
            per_class[coco_gt.cats[category_id]["name"]] = {
                "VOC07": voc_ap(*curve, use_07_metric=True),
                "VOC12": voc_ap(*curve, use_07_metric=False),
            }
    mean = {
        k: float(np.mean([ap[k] for ap in per_class.values()])) if per_class else float("nan")
        for k in ("VOC07", "VOC12")
    }
    return {**mean, "per_class": per_class}
