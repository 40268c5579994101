"""SSD augmentation for the PyTorch data path (OpenCV + NumPy), the older implementation's recipe
(docs/ssd.md section 7; augmentation: the paper section 2.2 "Data augmentation").

Training: SSD random crop -> horizontal flip (p=0.5) -> resize 300x300 -> colour jitter (uint8, after the
resize as the older implementation and NVIDIA do: 300x300 pixels instead of the crop's) -> uint8 [3, 300, 300].
Evaluation: resize only. The ImageNet normalisation happens where the batch reaches its device (`normalise`,
called by Batch.to): a worker ships 270 KB of uint8 per image instead of 1.08 MB of float32.
The resize is PIL's antialiased bilinear filter (see `resize`), the filter the older implementation's
checkpoints were trained with and the one DALI's `fn.resize` applies. Boxes are normalised xyxy in [0, 1].
All randomness comes from the numpy Generator passed in, so a sample is reproducible from
(seed, epoch, index) whatever the number of loader workers.
"""

from __future__ import annotations

import functools

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


def box_iou_np(boxes: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """IoU of boxes [n, 4] with crops [t, 4] (xyxy) -> [t, n]."""
    boxes, crops = boxes[None], crops[:, None]
    iw = np.clip(np.minimum(boxes[..., 2], crops[..., 2]) - np.maximum(boxes[..., 0], crops[..., 0]), 0, None)
    ih = np.clip(np.minimum(boxes[..., 3], crops[..., 3]) - np.maximum(boxes[..., 1], crops[..., 1]), 0, None)
    inter = iw * ih
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    union = area + (crops[..., 2] - crops[..., 0]) * (crops[..., 3] - crops[..., 1]) - inter
    return inter / np.maximum(union, 1e-12)


def draw_crops(rng: np.random.Generator) -> np.ndarray:
    """CROP_TRIALS candidate windows at once [t, 4] (normalised xyxy): w, h in [0.3, 1), the window
    uniform inside the image. One draw of arrays instead of a Python loop of scalar draws."""
    w, h = rng.uniform(0.3, 1.0, (2, CROP_TRIALS))
    left, top = rng.uniform(0.0, 1.0, (2, CROP_TRIALS)) * (1.0 - np.stack([w, h]))
    return np.stack([left, top, left + w, top + h], axis=1).astype(np.float32)


def valid_crops(crops: np.ndarray, boxes: np.ndarray, min_iou: float, max_iou: float) -> np.ndarray:
    """Which windows [t, 4] the SSD crop accepts [t] (bool): aspect w/h in [0.5, 2], every box's IoU with
    the window strictly between the bounds, and at least one box centre strictly inside."""
    w, h = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    ious = box_iou_np(boxes, crops)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx > crops[:, :1]) & (cx < crops[:, 2:3]) & (cy > crops[:, 1:2]) & (cy < crops[:, 3:])
    return (w / h >= 0.5) & (w / h <= 2.0) & ((ious > min_iou) & (ious < max_iou)).all(axis=1) & inside.any(axis=1)


def crop_boxes(boxes: np.ndarray, labels: np.ndarray, crop: np.ndarray):
    """The boxes [n, 4] whose centre is inside `crop` (normalised xyxy), clipped to the window and
    re-normalised to it, and their labels."""
    left, top, right, bottom = crop
    w, h = right - left, bottom - top
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx > left) & (cx < right) & (cy > top) & (cy < bottom)
    kept = np.clip(boxes[inside], crop[[0, 1, 0, 1]], crop[[2, 3, 2, 3]])
    kept = (kept - crop[[0, 1, 0, 1]]) / np.array([w, h, w, h], dtype=np.float32)
    kept = np.clip(kept, 0.0, 1.0)  # rounding can land a clipped edge at 1.0000001
    return kept.astype(np.float32), labels[inside]


def crop_pixels(crop: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The pixel window (x0, y0, x1, y1) of `crop` (normalised xyxy) in a height x width image, never empty.
    Both data paths cut through here: the GPU path's pixels match only if the rounding is the same."""
    left, top, right, bottom = crop
    x0, y0 = int(left * width), int(top * height)
    return x0, y0, max(int(right * width), x0 + 1), max(int(bottom * height), y0 + 1)


def apply_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, crop: np.ndarray):
    """Cut `crop` (normalised xyxy) out of the image (crop_pixels) and the boxes (crop_boxes)."""
    x0, y0, x1, y1 = crop_pixels(crop, *image.shape[:2])
    return (image[y0:y1, x0:x1], *crop_boxes(boxes, labels, crop))


def choose_crop(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """SSD random crop's window (normalised xyxy [4]), or None to keep the whole image: draw an option
    (none, min IoU 0.1/0.3/0.5/0.7/0.9, any), then CROP_TRIALS windows at once; the first window
    valid_crops accepts wins; none: draw a new option. Needs only the boxes (the GPU path's workers)."""
    while True:
        option = CROP_OPTIONS[rng.integers(len(CROP_OPTIONS))]
        if option is None or len(boxes) == 0:
            return None
        min_iou = -np.inf if option[0] is None else option[0]
        max_iou = np.inf if option[1] is None else option[1]
        crops = draw_crops(rng)
        valid = valid_crops(crops, boxes, min_iou, max_iou)
        if valid.any():
            return crops[np.argmax(valid)]


def random_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """SSD random crop: the window of choose_crop cut out of image and boxes (apply_crop)."""
    crop = choose_crop(boxes, rng)
    return (image, boxes, labels) if crop is None else apply_crop(image, boxes, labels, crop)


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes [n, 4] (normalised xyxy) of the left-right mirrored image."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1.0 - boxes[:, 2], 1.0 - boxes[:, 0]
    return flipped


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right and the boxes with it."""
    return image[:, ::-1], flip_boxes(boxes)


def jitter_factors(rng: np.random.Generator, brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05):
    """torchvision ColorJitter's ranges, drawn in this order: brightness, contrast, saturation factors and
    the hue shift in OpenCV's hue units (180 per turn)."""
    b, c, s = (rng.uniform(1 - r, 1 + r) for r in (brightness, contrast, saturation))
    return b, c, s, int(round(rng.uniform(-hue, hue) * 180))


def shift_hue(image: np.ndarray, shift: int) -> np.ndarray:
    """RGB uint8 with its hue turned by `shift` OpenCV hue units (of 180). The HSV round trip itself
    moves colours by a few levels, so no shift means no conversion."""
    if shift == 0:
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def adjust_bcs(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness, contrast, saturation on RGB uint8 with OpenCV's saturating uint8 arithmetic, rounded
    after each step (as PIL's ImageEnhance in the older implementation): about 0.3 ms at 300x300."""
    image = cv2.convertScaleAbs(image, alpha=brightness)
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    image = cv2.addWeighted(image, contrast, image, 0.0, (1 - contrast) * mean)
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, saturation, gray, 1 - saturation, 0.0)


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision ColorJitter's factors (jitter_factors) applied to RGB uint8 [H, W, 3]."""
    brightness, contrast, saturation, shift = jitter_factors(rng)
    return shift_hue(adjust_bcs(image, brightness, contrast, saturation), shift)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> RGB uint8 [size, size, 3], bilinear, antialiased when shrinking.

    PIL's bilinear filter (torchvision's uint8 port of it, within 1 uint8 level of PIL), which widens
    with the scale when shrinking, as the older implementation, NVIDIA's SSD and DALI's fn.resize filter;
    why not OpenCV's INTER_LINEAR or INTER_AREA, measured: docs/ssd.md section 7.
    """
    if not image.flags.writeable:  # e.g. np.asarray(PIL image): torch.from_numpy would warn
        image = image.copy()
    chw = torch.from_numpy(image).permute(2, 0, 1)  # [3, H, W] view of the HWC array, no copy
    out = TF.resize(chw, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return out.permute(1, 2, 0).numpy()


@functools.lru_cache(maxsize=16)
def imagenet_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std [3, 1, 1] float32 on `device`, made once per device: making a tensor from
    host values copies it and waits for the stream (a host sync on CUDA), which must not happen every batch."""
    return (
        torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
        torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1),
    )


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> ImageNet-normalised float32, (x / 255 - mean) / std, on the images' device."""
    mean, std = imagenet_mean_std(images.device)
    return (images.float() / 255.0 - mean) / std


def to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> resized (PIL's filter, `resize`), ImageNet-normalised float32 [3, size, size]."""
    return normalise(torch.from_numpy(resize(image, size)).permute(2, 0, 1))


class SSDTransform:
    """Callable (image RGB uint8 [H, W, 3], boxes [n, 4] normalised xyxy, labels [n], rng)
    -> (image [3, size, size], boxes float32 [n, 4], labels int64 [n]); the image is uint8 (normalised
    later, on the device: `normalise`), or with normalised=True ImageNet-normalised float32."""

    def __init__(self, train: bool, size: int = 300, normalised: bool = False):
        self.train, self.size, self.normalised = train, size, normalised

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if self.train:
            image, boxes, labels = random_crop(image, boxes, labels, rng)
            if rng.random() < 0.5:
                image, boxes = hflip(image, boxes)
        image = resize(np.ascontiguousarray(image), self.size)
        if self.train:
            image = color_jitter(image, rng)
        chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return (
            normalise(chw) if self.normalised else chw,
            torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )
