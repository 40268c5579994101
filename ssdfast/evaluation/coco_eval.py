"""COCO box evaluation: detections -> COCO results JSON -> the 12-number table.

Backends: pycocotools (the reference) or faster-coco-eval (same numbers, C++ accumulate, optional).
In a distributed run every rank converts its shard's detections and rank 0 evaluates the union.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
import torch.distributed as dist

from ssdfast.postprocess import Detections, scale_to_image

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
BACKENDS = ("pycocotools", "faster-coco-eval")


def detections_to_coco(
    dets: Detections, image_ids: torch.Tensor, sizes: torch.Tensor, category_ids: list[int]
) -> list[dict]:
    """Fixed-size detections of a batch -> COCO result dicts (pixel xywh boxes, category ids).
    Host sync here (.cpu()): evaluation only."""
    boxes = scale_to_image(dets.boxes.float(), sizes.to(dets.boxes.device)).cpu()
    scores, labels, counts = dets.scores.cpu(), dets.labels.cpu(), dets.counts.cpu()
    results = []
    for i, image_id in enumerate(image_ids.tolist()):
        for box, score, label in zip(
            boxes[i, : counts[i]].tolist(), scores[i, : counts[i]].tolist(), labels[i, : counts[i]].tolist()
        ):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label - 1]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return results


def gather_to_rank0(items: list) -> list:
    """Concatenate per-rank lists on rank 0 (other ranks get []). No-op when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return items
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items, gathered, dst=0)
    return [x for part in gathered for x in part] if gathered is not None else []


def coco_evaluate(
    coco_gt,
    results: list[dict],
    image_ids: list[int] | None = None,
    backend: str = "pycocotools",
    curves: dict | None = None,
) -> tuple[dict[str, float] | None, str]:
    """COCO box AP/AR of `results` against `coco_gt` (a pycocotools COCO object).

    image_ids: restrict to these images (default: all of coco_gt). Returns ({name: value}, table text),
    or (None, the reason) when those images have no ground truth to compare with.
    curves: if given, filled with each class's precision at IoU 0.5 over COCO's 101 recall points.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
    evaluated = set(coco_gt.getImgIds() if image_ids is None else image_ids)
    if not any(not ann.get("iscrowd", 0) for i in evaluated for ann in coco_gt.imgToAnns.get(i, [])):
        # COCOeval would print -1 for every metric; say why instead.
        return None, (
            f"nothing to evaluate: the {len(evaluated)} evaluated image(s) have no ground-truth boxes "
            "(an annotation file without annotations?)"
        )
    if not results:
        zeros = {name: 0.0 for name in STAT_NAMES}
        return zeros, "no detections: every COCO metric is 0"
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster as Evaluator
        except ImportError as error:
            raise RuntimeError("--backend faster-coco-eval needs: pip install faster-coco-eval") from error
        gt = FastCOCO(copy.deepcopy(coco_gt.dataset))
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = Evaluator(gt, dt, iouType="bbox", print_function=print)
    else:
        from pycocotools.cocoeval import COCOeval as Evaluator

        with contextlib.redirect_stdout(io.StringIO()):
            dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = Evaluator(coco_gt, dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(image_ids))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
    per_class = class_ap(evaluator, coco_gt)
    if curves is not None:
        curves.clear()
        curves.update(precision_at_iou50(evaluator, coco_gt))
    stats.update({f"AP_class/{name}": ap for name, ap in per_class.items()})
    table = [line for line in text.getvalue().splitlines() if "Average" in line]
    return stats, "\n".join(
        table
        + ["AP per class (IoU 0.50:0.95, all areas, 100 detections):"]
        + [f"  {name:>24s}  {ap:.3f}" for name, ap in per_class.items()]
    )


def precision_at_iou50(evaluator, coco_gt) -> dict[str, np.ndarray]:
    """Each class's precision [101] at recall 0, 0.01, ..., 1 (IoU 0.5, all areas, 100 detections; -1 where
    the class has no ground truth), from COCOeval's accumulated precision."""
    precision = evaluator.eval["precision"][0, :, :, 0, -1]
    return {coco_gt.cats[c]["name"]: precision[:, k].copy() for k, c in enumerate(evaluator.params.catIds)}


def class_ap(evaluator, coco_gt) -> dict[str, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) of each category with ground truth in the evaluated
    images, from COCOeval's accumulated precision [IoU T, recall R, category K, area A, max dets M]
    (-1 where a category has no ground truth)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    out = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        if (values > -1).any():
            out[coco_gt.cats[category_id]["name"]] = float(values[values > -1].mean())
    return out
