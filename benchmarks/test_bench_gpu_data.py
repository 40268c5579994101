"""Loader-only throughput on COCO-sized JPEGs (640x480, quality 90), training augmentation: the PyTorch
path (CPU workers) vs the GPU path (workers read bytes; decode and augmentation on the device, or on
the CPU without one); and SSD300 b128 fed by the GPU path vs the same step on synthetic tensors (CUDA).

CPU runs use a small set (CI runs this file with --benchmark-disable: one call each, a few seconds).
"""

import json

import cv2
import numpy as np
import pytest
from conftest import CUDA, run
from workloads import ssd300_fp16_step, time_fed_epoch

from ssdfast.data import build_loader

CPU_IMAGES, CUDA_IMAGES = 64, 1536


def write_coco_sized(root, num_images: int, seed: int = 0):
    """A COCO-layout train split of num_images 640x480 JPEGs (quality 90, COCO's typical size and
    quality): smooth colour noise with sharp rectangles, one to four boxes each."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, annotations = [], []
    tiles = [cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480)) for _ in range(16)]
    for image_id in range(1, num_images + 1):
        image = tiles[image_id % 16].copy()
        for _ in range(int(rng.integers(1, 5))):
            x, y, w, h = (
                int(rng.integers(0, 480)),
                int(rng.integers(0, 320)),
                int(rng.integers(32, 160)),
                int(rng.integers(32, 160)),
            )
            image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(root / "train2017" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "height": 480, "width": 640})
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]})
    )
    return root


@pytest.fixture(scope="module")
def coco_sized_small(tmp_path_factory):
    return write_coco_sized(tmp_path_factory.mktemp("coco_sized_small"), CPU_IMAGES)


@pytest.fixture(scope="module")
def coco_sized_large(tmp_path_factory):
    return write_coco_sized(tmp_path_factory.mktemp("coco_sized_large"), CUDA_IMAGES)


def epoch(loader, device):
    """Images of one epoch, each batch brought to `device` ready for the step (normalised there)."""
    count = 0
    for batch in loader:
        count += len(batch.to(device, channels_last=True).images)
    return count


@pytest.mark.parametrize("backend", ["pytorch", "gpu"])
def test_loader_coco_sized_cpu(benchmark, coco_sized_small, backend):
    benchmark.group = f"data loader, training augmentation, {CPU_IMAGES} COCO-sized JPEGs, batch 16, 2 workers [cpu]"
    loader = build_loader(coco_sized_small, "train", train=True, batch_size=16, num_workers=2, backend=backend)
    count = run(
        benchmark,
        lambda: epoch(loader, "cpu"),
        role="baseline" if backend == "pytorch" else "candidate",
        items=CPU_IMAGES,
        rounds=2,
    )
    assert count == CPU_IMAGES


@CUDA
@pytest.mark.parametrize("workers", [4, 14])
@pytest.mark.parametrize("backend", ["pytorch", "gpu"])
def test_loader_coco_sized_cuda(benchmark, coco_sized_large, backend, workers):
    benchmark.group = f"data loader, training augmentation, {CUDA_IMAGES} COCO-sized JPEGs, batch 128 [cuda]"
    loader = build_loader(
        coco_sized_large, "train", train=True, batch_size=128, num_workers=workers, backend=backend, device="cuda"
    )
    role = "baseline" if (backend, workers) == ("pytorch", 14) else "candidate"
    count = run(benchmark, lambda: epoch(loader, "cuda"), role=role, items=CUDA_IMAGES, rounds=2, device="cuda")
    assert count == CUDA_IMAGES


@CUDA
@pytest.mark.parametrize("source", ["synthetic_tensors", "gpu_loader_4_workers"])
def test_train_from_gpu_loader_cuda(benchmark, coco_sized_large, source):
    """SSD300 b128 fp16 channels_last: the step alone vs the step fed by the GPU data path. Equal rates:
    the data keeps up."""
    batch = 128
    benchmark.group = f"train ssd300 b{batch} fp16 channels_last: gpu data path [cuda]"
    train_step = ssd300_fp16_step()
    loader = build_loader(
        coco_sized_large,
        "train",
        train=True,
        batch_size=batch,
        num_workers=4,
        device="cuda",
        backend="gpu",
        max_boxes=128,
    )
    time_fed_epoch(benchmark, train_step, loader, batch, step_alone=source == "synthetic_tensors")
