"""Per-class AP beside pycocotools' 12 numbers: the overall AP is the mean of the per-class APs, and a
hand-made case gives 1 for a class found exactly and 0 for one never detected."""

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from ssdfast.evaluation.coco_eval import coco_evaluate


def ground_truth(rng, images=6):
    cats = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 9, "name": "triangle"}]
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 100} for i in range(1, images + 1)]
    anns = []
    for image in imgs:
        for cat in cats:
            x, y = rng.uniform(0, 120), rng.uniform(0, 50)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image["id"],
                    "category_id": cat["id"],
                    "iscrowd": 0,
                    "bbox": [x, y, 60.0, 40.0],
                    "area": 2400.0,
                }
            )
    coco = COCO()
    coco.dataset = {"images": imgs, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_overall_ap_is_the_mean_of_the_per_class_aps():
    rng = np.random.default_rng(0)
    coco = ground_truth(rng)
    results = []
    for ann in coco.dataset["annotations"]:  # each box found, jittered by a few pixels, plus a false alarm
        x, y, w, h = ann["bbox"]
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "score": float(rng.uniform()),
                "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w + rng.normal(0, 4), h],
            }
        )
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "score": float(rng.uniform()),
                "bbox": [float(rng.uniform(0, 150)), float(rng.uniform(0, 60)), 30.0, 30.0],
            }
        )
    stats, table = coco_evaluate(coco, results)
    per_class = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("AP_class/")}
    assert sorted(per_class) == ["circle", "square", "triangle"]
    assert abs(np.mean(list(per_class.values())) - stats["AP"]) < 1e-9
    assert len(set(per_class.values())) == 3  # the jitter makes them differ: not one number copied thrice
    assert "AP per class" in table and "triangle" in table


def test_a_class_found_exactly_has_ap_1_and_one_never_detected_0():
    coco = ground_truth(np.random.default_rng(1), images=2)
    circles = [a for a in coco.dataset["annotations"] if a["category_id"] == 3]
    results = [{"image_id": a["image_id"], "category_id": 3, "bbox": a["bbox"], "score": 0.9} for a in circles]
    stats, _ = coco_evaluate(coco, results)
    assert stats["AP_class/circle"] == 1.0
    assert stats["AP_class/square"] == 0.0 and stats["AP_class/triangle"] == 0.0
