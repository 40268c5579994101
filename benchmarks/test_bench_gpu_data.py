"""Loader-only throughput on COCO-sized JPEGs (640x480, quality 90), training augmentation: the PyTorch
path (CPU workers) vs the GPU path (workers read bytes; decode and augmentation on the device, or on
the CPU without one) vs DALI (where installed); and the training step fed by each path vs the same step
on synthetic tensors (SSDLite b16 on CPU, SSD300 b128 on CUDA).

Timed runs (`make bench`, `make gpu`) read 1,536 files (96 batches of 16 on CPU, 12 of 128 on CUDA); a
smoke run (--benchmark-disable: CI) reads 64, so it takes seconds.
"""

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import CUDA, run
from workloads import ssd300_fp16_step, time_fed_epoch

from ssdfast.data import build_loader
from ssdfast.models import build_model
from ssdfast.training.step import TrainStep

try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False

TIMED_IMAGES, SMOKE_IMAGES = 1536, 64
CPU_FED_IMAGES, SMOKE_FED_IMAGES = 128, 16  # the fed CPU step: SSDLite trains ~8 images/s on 2 cores
DALI = pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")


def timed(config) -> bool:
    """True when pytest-benchmark times (make bench, make gpu), False for a smoke run (--benchmark-disable)."""
    return not config.getoption("benchmark_disable")


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
def coco_sized(tmp_path_factory, request):
    """1,536 COCO-sized JPEGs (64 in a smoke run)."""
    count = TIMED_IMAGES if timed(request.config) else SMOKE_IMAGES
    return write_coco_sized(tmp_path_factory.mktemp("coco_sized"), count), count


@pytest.fixture(scope="module")
def coco_sized_fed_cpu(tmp_path_factory, request):
    """The CPU fed step's set: 128 COCO-sized JPEGs (16 in a smoke run)."""
    count = CPU_FED_IMAGES if timed(request.config) else SMOKE_FED_IMAGES
    return write_coco_sized(tmp_path_factory.mktemp("coco_sized_fed"), count, seed=1), count


def epoch(loader, device):
    """Images of one epoch, each batch brought to `device` ready for the step (normalised there)."""
    count = 0
    for batch in loader:
        count += len(batch.to(device, channels_last=True).images)
    return count


BACKENDS_CPU = ["pytorch", "gpu", pytest.param("dali", marks=DALI)]


@pytest.mark.parametrize("backend", BACKENDS_CPU)
def test_loader_coco_sized_cpu(benchmark, coco_sized, backend):
    root, count = coco_sized
    benchmark.group = f"data loader, training augmentation, {count} COCO-sized JPEGs, batch 16, 2 workers [cpu]"
    loader = build_loader(root, "train", train=True, batch_size=16, num_workers=2, backend=backend)
    images = run(
        benchmark,
        lambda: epoch(loader, "cpu"),
        role="baseline" if backend == "pytorch" else "candidate",
        items=count,
        rounds=2,
    )
    assert images == count


@pytest.mark.parametrize("source", ["synthetic_tensors", *BACKENDS_CPU])
def test_train_from_loader_cpu(benchmark, coco_sized_fed_cpu, source):
    """SSDLite b16 fp32 channels_last on 2 cores: the step alone vs the step fed by each data path, whose
    2 workers (or DALI's threads) share the cores with the step: the CPU cost of loading, seen by training."""
    root, count = coco_sized_fed_cpu
    benchmark.group = f"train ssdlite b16 fp32 channels_last fed by each data path, {count} COCO-sized JPEGs [cpu]"
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=1).to(memory_format=torch.channels_last)
    train_step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    backend = "pytorch" if source == "synthetic_tensors" else source
    loader = build_loader(root, "train", train=True, batch_size=16, num_workers=2, backend=backend)
    time_fed_epoch(benchmark, train_step, loader, 16, step_alone=source == "synthetic_tensors", device="cpu", rounds=2)


@CUDA
@pytest.mark.parametrize("workers", [4, 14])
@pytest.mark.parametrize("backend", ["pytorch", "gpu"])
def test_loader_coco_sized_cuda(benchmark, coco_sized, backend, workers):
    root, count = coco_sized
    benchmark.group = f"data loader, training augmentation, {count} COCO-sized JPEGs, batch 128 [cuda]"
    loader = build_loader(
        root, "train", train=True, batch_size=128, num_workers=workers, backend=backend, device="cuda"
    )
    role = "baseline" if (backend, workers) == ("pytorch", 14) else "candidate"
    images = run(benchmark, lambda: epoch(loader, "cuda"), role=role, items=count, rounds=2, device="cuda")
    assert images == count


@CUDA
@pytest.mark.parametrize("source", ["synthetic_tensors", "gpu_loader_4_workers"])
def test_train_from_gpu_loader_cuda(benchmark, coco_sized, source):
    """SSD300 b128 fp16 channels_last: the step alone vs the step fed by the GPU data path. Equal rates:
    the data keeps up."""
    batch = 128
    benchmark.group = f"train ssd300 b{batch} fp16 channels_last: gpu data path [cuda]"
    train_step = ssd300_fp16_step()
    loader = build_loader(
        coco_sized[0],
        "train",
        train=True,
        batch_size=batch,
        num_workers=4,
        device="cuda",
        backend="gpu",
        max_boxes=128,
    )
    time_fed_epoch(benchmark, train_step, loader, batch, step_alone=source == "synthetic_tensors")
