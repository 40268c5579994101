"""The PyTorch path's per-image CPU work on one core: decode + SSD training augmentation of COCO-sized
JPEGs (640x480, quality 90, 7 boxes each), ssdfast's transform against torchvision's v2 detection
transforms (its SSD reference recipe without zoom-out) and against ssdfast's former order (colour jitter
in float32 at the crop's resolution, before the resize, and a float32 sample)."""

import cv2
import numpy as np
import pytest
import torch
from baselines import adjust_bcs_reference
from conftest import run
from torchvision import tv_tensors
from torchvision.io import decode_jpeg
from torchvision.transforms import v2

from ssdfast.data.coco import read_image
from ssdfast.data.draws import choose_crop, draw, jitter_factors
from ssdfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SSDTransform, apply_crop, hflip, shift_hue, to_tensor

IMAGES = 24


@pytest.fixture(scope="module")
def coco_sized_jpegs(tmp_path_factory):
    """(path, boxes [7, 4] normalised xyxy, labels [7]) of IMAGES photo-like 640x480 JPEGs."""
    folder, rng, out = tmp_path_factory.mktemp("jpegs"), np.random.default_rng(0), []
    y, x = np.mgrid[0:480, 0:640] / 640
    for i in range(IMAGES):
        base = np.stack([np.sin(7 * x + i), np.cos(5 * y - i), np.sin(3 * (x + y) + 2 * i)], axis=-1) * 90 + 128
        image = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        xy = rng.uniform(0, 0.7, (7, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (7, 2))], axis=1).astype(np.float32)
        path = folder / f"{i:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append((path, boxes, np.arange(1, 8)))
    return out


def ssdfast_sample(path, boxes, labels, key):
    return SSDTransform()(read_image(path), boxes.copy(), labels, draw(key, boxes))


def former_order_sample(path, boxes, labels, key):
    rng = np.random.default_rng(key)
    image, crop = read_image(path), choose_crop(boxes, rng)
    if crop is not None:
        image, boxes, labels = apply_crop(image, boxes, labels, crop)
    if rng.random() < 0.5:
        image, boxes = hflip(image, boxes)
    brightness, contrast, saturation, shift = jitter_factors(rng)
    image = shift_hue(adjust_bcs_reference(np.ascontiguousarray(image), brightness, contrast, saturation), shift)
    return to_tensor(image, 300), boxes, labels


TORCHVISION_SSD = v2.Compose(
    [
        v2.RandomPhotometricDistort(p=1.0),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(),
        v2.Resize((300, 300), antialias=True),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
    ]
)


def torchvision_sample(path, boxes, labels, key):  # torchvision draws from torch's generator
    image = decode_jpeg(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))
    h, w = image.shape[-2:]
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes) * torch.tensor([w, h, w, h]), format="XYXY", canvas_size=(h, w)
        ),
        "labels": torch.from_numpy(labels),
    }
    return TORCHVISION_SSD(tv_tensors.Image(image), target)


@pytest.mark.parametrize("impl", ["torchvision_v2", "ssdfast", "ssdfast_former_order"])
def test_augment_one_core(benchmark, coco_sized_jpegs, impl):
    benchmark.group = f"decode + SSD training augmentation, {IMAGES} COCO-sized JPEGs, one core [cpu]"
    sample = {
        "torchvision_v2": torchvision_sample,
        "ssdfast": ssdfast_sample,
        "ssdfast_former_order": former_order_sample,
    }[impl]
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)  # a loader worker's share: one core
    cv2.setNumThreads(1)
    try:

        def epoch():
            for i, (path, boxes, labels) in enumerate(coco_sized_jpegs):
                out = sample(path, boxes, labels, (0, 0, i))
            return out

        run(benchmark, epoch, role="baseline" if impl == "torchvision_v2" else "candidate", items=IMAGES, rounds=5)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
