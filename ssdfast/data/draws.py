"""The one draw of a training sample's augmentation: (seed, epoch, index) -> Draw (crop window or none, flip,
colour factors, hue shift). The three data paths only apply a Draw: the PyTorch path (transforms.SSDTransform),
the GPU path (gpu_pipeline.GpuAugment) and the DALI path (dali.build_pipeline, fed by dali.dali_inputs).
So a sample is the same sample on every path, with any number of workers, and a restarted epoch replays it.

Where a new augmentation goes: draw its parameters here, as a new field of Draw drawn in `draw` AFTER the
existing ones (drawing it earlier would change every existing sample's stream, and with it every path's
output), with its "off" value in NO_AUGMENTATION; then apply it in each of the three paths above, and add
it to the same-draw test (tests/test_data.py) and to the path comparisons (tests/test_gpu_data.py).

The recipe is SSD's (the paper's section 2.2 "Data augmentation"; ssdfast's details and why: docs/ssd.md section 7):
SSD random crop, horizontal flip (p=0.5), then torchvision ColorJitter's factors. The order of the draws
from the sample's numpy Generator is fixed: crop option (and windows), flip, brightness, contrast,
saturation, hue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# SSD random crop options: None = keep the whole image; (min IoU, max IoU) of the crop with every kept box.
CROP_OPTIONS = (None, (0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None), (None, None))
CROP_TRIALS = 50  # tries per chosen option before drawing a new option
# torchvision ColorJitter's ranges: factors in [1 - r, 1 + r]; the hue shift in [-r, r] turns.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.125, 0.5, 0.5, 0.05
HUE_UNITS = 180  # OpenCV's 8-bit hue units per turn, the unit of Draw.hue_shift


@dataclass(frozen=True)
class Draw:
    """What the augmentation does to one sample. Comparable and hashable (the crop is a tuple), ~180 bytes
    pickled, so the GPU and DALI paths' workers ship it beside the file's bytes."""

    crop: tuple[float, float, float, float] | None  # normalised xyxy window (float32 values); None: whole image
    flip: bool  # mirror left-right
    brightness: float  # factor, 1 = unchanged
    contrast: float  # factor towards the image's mean grey, 1 = unchanged
    saturation: float  # factor towards each pixel's grey, 1 = unchanged
    hue_shift: int  # OpenCV hue units (HUE_UNITS per turn), 0 = unchanged

    @property
    def window(self) -> np.ndarray:
        """The crop window as float32 [4] (normalised xyxy); the whole image [0, 0, 1, 1] when not cropped."""
        return np.array((0.0, 0.0, 1.0, 1.0) if self.crop is None else self.crop, dtype=np.float32)

    @property
    def jitter(self) -> tuple[float, float, float, int]:
        """(brightness, contrast, saturation, hue_shift): the colour factors in the order they are drawn."""
        return self.brightness, self.contrast, self.saturation, self.hue_shift


NO_AUGMENTATION = Draw(crop=None, flip=False, brightness=1.0, contrast=1.0, saturation=1.0, hue_shift=0)


def draw(key: tuple[int, int, int], boxes: np.ndarray, train: bool = True) -> Draw:
    """The augmentation of the sample `key` = (seed, epoch, index) with ground truth `boxes` [n, 4]
    (normalised xyxy; the crop must keep some of them): NO_AUGMENTATION for evaluation (train=False)."""
    if not train:
        return NO_AUGMENTATION
    rng = np.random.default_rng(key)
    crop = choose_crop(boxes, rng)
    flip = bool(rng.random() < 0.5)
    brightness, contrast, saturation, hue_shift = jitter_factors(rng)
    return Draw(
        crop=None if crop is None else tuple(float(v) for v in crop),  # float32 -> float: exact, and back
        flip=flip,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue_shift=hue_shift,
    )


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


def choose_crop(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """SSD random crop's window (normalised xyxy float32 [4]), or None to keep the whole image: draw an
    option (none, min IoU 0.1/0.3/0.5/0.7/0.9, any), then CROP_TRIALS windows at once; the first window
    valid_crops accepts wins; none: draw a new option."""
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


def jitter_factors(rng: np.random.Generator) -> tuple[float, float, float, int]:
    """torchvision ColorJitter's ranges, drawn in this order: brightness, contrast, saturation factors and
    the hue shift, rounded to OpenCV's hue units."""
    b, c, s = (rng.uniform(1 - r, 1 + r) for r in (BRIGHTNESS, CONTRAST, SATURATION))
    return b, c, s, int(round(rng.uniform(-HUE, HUE) * HUE_UNITS))
