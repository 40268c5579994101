"""COCO evaluation time for a fixed set of detections: pycocotools vs faster-coco-eval."""

import numpy as np
import pytest
from conftest import run

from ssdfast.data.coco import load_coco
from ssdfast.evaluation.coco_eval import coco_evaluate


@pytest.fixture(scope="module")
def gt_and_detections(bench_coco):
    coco = load_coco(bench_coco / "annotations" / "instances_val2017.json")
    rng = np.random.default_rng(0)
    results = []
    for image_id, info in coco.imgs.items():
        anns = coco.imgToAnns[image_id]
        for _ in range(100):  # 100 detections per image: jittered truths and clutter
            if anns and rng.random() < 0.5:
                ann = anns[rng.integers(len(anns))]
                x, y, w, h = (np.array(ann["bbox"]) * rng.uniform(0.9, 1.1, 4)).tolist()
                cat = ann["category_id"]
            else:
                w, h = rng.uniform(5, 100, 2)
                x, y = rng.uniform(0, info["width"] - w), rng.uniform(0, info["height"] - h)
                cat = int(rng.choice(coco.getCatIds()))
            results.append({"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": rng.random()})
    return coco, results


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_coco_eval(benchmark, gt_and_detections, backend):
    benchmark.group = "COCO eval, 64 images x 100 detections"
    coco, results = gt_and_detections
    stats, _ = run(
        benchmark,
        lambda: coco_evaluate(coco, results, backend=backend),
        role="baseline" if backend == "pycocotools" else "candidate",
        items=1,
        rounds=3,
    )
    assert 0 < stats["AP50"] <= 1
