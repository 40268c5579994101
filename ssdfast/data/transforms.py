"""SSD augmentation for the PyTorch data path (OpenCV + NumPy), the seed's recipe (docs/ssd.md; augmentation: the paper section 2.2 "Data augmentation").

Training: SSD random crop -> horizontal flip (p=0.5) -> colour jitter -> resize 300x300 -> ImageNet
normalisation. Evaluation: resize + normalise. The resize is PIL's antialiased bilinear filter (see
`resize`), the filter the seed's checkpoints were trained with and the one DALI's `fn.resize` applies.
Boxes are normalised xyxy in [0, 1] throughout.
All randomness comes from the numpy Generator passed in, so a sample is reproducible from
(seed, epoch, index) whatever the number of loader workers.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# SSD random crop options: None = keep the whole image; (min IoU, max IoU) of the crop with every kept box.
CROP_OPTIONS = (None, (0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None), (None, None))
CROP_TRIALS = 50  # tries per chosen option before drawing a new option


def box_iou_np(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of boxes [n, 4] with one box [4] (xyxy)."""
    iw = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = iw * ih
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / np.maximum(union, 1e-12)


def random_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """SSD random crop: crop w, h in [0.3, 1] of the image, aspect w/h in [0.5, 2], IoU with every box
    within the chosen bounds; keep the boxes whose centre is inside, clipped and re-normalised."""
    height, width = image.shape[:2]
    while True:
        option = CROP_OPTIONS[rng.integers(len(CROP_OPTIONS))]
        if option is None or len(boxes) == 0:
            return image, boxes, labels
        min_iou = -np.inf if option[0] is None else option[0]
        max_iou = np.inf if option[1] is None else option[1]
        for _ in range(CROP_TRIALS):
            w, h = rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
            if not 0.5 <= w / h <= 2.0:
                continue
            left, top = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
            crop = np.array([left, top, left + w, top + h], dtype=np.float32)
            ious = box_iou_np(boxes, crop)
            if not ((ious > min_iou) & (ious < max_iou)).all():
                continue
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            inside = (cx > crop[0]) & (cx < crop[2]) & (cy > crop[1]) & (cy < crop[3])
            if not inside.any():
                continue
            kept = np.clip(boxes[inside], crop[[0, 1, 0, 1]], crop[[2, 3, 2, 3]])
            kept = (kept - crop[[0, 1, 0, 1]]) / np.array([w, h, w, h], dtype=np.float32)
            kept = np.clip(kept, 0.0, 1.0)  # rounding can land a clipped edge at 1.0000001
            x0, y0 = int(left * width), int(top * height)
            x1, y1 = max(int((left + w) * width), x0 + 1), max(int((top + h) * height), y0 + 1)
            return image[y0:y1, x0:x1], kept.astype(np.float32), labels[inside]


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right and the boxes with it."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1.0 - boxes[:, 2], 1.0 - boxes[:, 0]
    return image[:, ::-1], flipped


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness=0.125, contrast=0.5, saturation=0.5,
                 hue=0.05) -> np.ndarray:
    """torchvision ColorJitter's factors on an RGB uint8 image: brightness, contrast, saturation, hue."""
    img = image.astype(np.float32)
    img *= rng.uniform(1 - brightness, 1 + brightness)
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = (img - gray.mean()) * rng.uniform(1 - contrast, 1 + contrast) + gray.mean()
    gray = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    img = (img - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    img = np.clip(img, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # OpenCV hue is in [0, 180)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(rng.uniform(-hue, hue) * 180))) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> RGB uint8 [size, size, 3], bilinear, antialiased when shrinking.

    The seed (torchvision Resize on PIL images), NVIDIA's SSD and DALI's fn.resize all filter like PIL's
    bilinear: when shrinking, the triangle filter widens with the scale so every source pixel counts.
    Measured against PIL on the detailed images of tests/test_preprocessing.py (normalised units):
    OpenCV INTER_LINEAR (used before) does not widen it and aliases edges, text and texture when
    shrinking (0.06-1.0 mean |diff|, up to 2.4); INTER_AREA is a box filter (0.02-0.3 mean when
    shrinking, 0.08-0.4 when enlarging, where it acts like nearest neighbour); torchvision's uint8
    antialiased kernel is a port of PIL's and stays within 1 uint8 level of it everywhere, shrinking or
    enlarging. Cost for 640x480 -> 300x300 on one core: 0.4-0.6 ms against 0.2-0.3 ms for INTER_LINEAR
    (and 2.6 ms through PIL itself, with its array round trip).
    """
    if not image.flags.writeable:  # e.g. np.asarray(PIL image): torch.from_numpy would warn
        image = image.copy()
    chw = torch.from_numpy(image).permute(2, 0, 1)  # [3, H, W] view of the HWC array, no copy
    out = TF.resize(chw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out.permute(1, 2, 0).numpy()


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> resized (PIL's filter, `resize`), ImageNet-normalised float32 [3, size, size]."""
    image = resize(image, size)
    image = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(image.transpose(2, 0, 1).copy())


class SSDTransform:
    """Callable (image RGB uint8 [H, W, 3], boxes [n, 4] normalised xyxy, labels [n], rng)
    -> (image float32 [3, size, size], boxes float32 [n, 4], labels int64 [n])."""

    def __init__(self, train: bool, size: int = 300):
        self.train = train
        self.size = size

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if self.train:
            image, boxes, labels = random_crop(image, boxes, labels, rng)
            if rng.random() < 0.5:
                image, boxes = hflip(image, boxes)
            image = color_jitter(np.ascontiguousarray(image), rng)
        return (
            to_tensor(np.ascontiguousarray(image), self.size),
            torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )
