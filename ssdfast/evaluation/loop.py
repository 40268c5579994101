"""The evaluation loop shared by tools/eval.py and the per-epoch evaluation of training:
predict (detections of one rank) -> evaluate (gathered to rank 0, COCO metrics).

The training loop lives in ssdfast/training/.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm import tqdm

from ssdfast.defaults import DETECTION_POLICY, DetectionPolicy
from ssdfast.evaluation.coco_eval import coco_evaluate, detections_to_coco, gather_to_rank0
from ssdfast.inference import as_detector


@torch.no_grad()
def predict(
    model,
    loader,
    device,
    *,
    amp_dtype=None,
    channels_last=False,
    policy: DetectionPolicy = DETECTION_POLICY,
    category_ids,
    max_batches=None,
    is_main=True,
    on_batch=None,
) -> tuple[list[dict], list[int], list[str]]:
    """Run the detector over `loader` -> (COCO results, evaluated image ids, unreadable images) of this rank.
    model: an SSD module (+ ssdfast.postprocess with `policy`) or any detector of
    ssdfast.inference.as_detector (an exported file: its policy given when it was loaded).
    on_batch(batch) sees each batch as the loader gives it (pictures)."""
    detector = as_detector(model, policy=policy, amp_dtype=amp_dtype)
    results, image_ids, skipped = [], [], []
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, batch in enumerate(tqdm(loader, total=total, desc="eval", disable=not is_main, leave=False)):
        if i >= total:
            break
        skipped += batch.skipped
        if on_batch is not None:
            on_batch(batch)
        if len(batch.images) == 0:
            continue
        dets = detector(batch.to(device, channels_last=channels_last).images)
        results += detections_to_coco(dets, batch.image_ids, batch.sizes, category_ids)
        image_ids += batch.image_ids.tolist()
    return results, image_ids, skipped


def evaluate(
    model, loader, device, *, backend="pycocotools", curves: dict | None = None, **kwargs
) -> tuple[dict | None, str, list[dict], list]:
    """COCO evaluation over a (possibly sharded) loader. Rank 0 gets (stats, table, all results,
    evaluated image ids); other ranks get (None, "", [], []). curves: see coco_eval.coco_evaluate."""
    results, image_ids, skipped = predict(model, loader, device, category_ids=loader.info.category_ids, **kwargs)
    results, image_ids = gather_to_rank0(results), gather_to_rank0(image_ids)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None, "", [], []
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) left out of evaluation, e.g. {skipped[0]}")
    stats, table = coco_evaluate(loader.info.coco, results, image_ids=image_ids, backend=backend, curves=curves)
    return stats, table, results, image_ids
