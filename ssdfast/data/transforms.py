"""SSD augmentation applied on the PyTorch data path (OpenCV + NumPy): the paper's recipe (section 2.2
"Data augmentation"), with the details docs/ssd.md section 7 gives. What to do to a sample
is drawn in draws.py (a Draw); this module only applies it, and holds the box and pixel pieces the GPU
and DALI paths share (crop_pixels, augment_boxes, resize, normalise).

Training: SSD random crop -> horizontal flip -> resize 300x300 -> colour jitter (uint8, after the
resize, as NVIDIA's SSD300 does: 300x300 pixels to jitter instead of the crop's) -> uint8 [3, 300, 300].
Evaluation: resize only (NO_AUGMENTATION). The ImageNet normalisation happens where the batch reaches its device (`normalise`,
called by Batch.to): a worker ships 270 KB of uint8 per image instead of 1.08 MB of float32.
The resize is PIL's antialiased bilinear filter (see `resize`), the filter the published SSD300
checkpoints were trained with and the one DALI's `fn.resize` applies. Boxes are normalised xyxy in [0, 1].
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ssdfast.data.draws import NO_AUGMENTATION, Draw

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes [n, 4] (normalised xyxy) of the left-right mirrored image."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1.0 - boxes[:, 2], 1.0 - boxes[:, 0]
    return flipped


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right and the boxes with it."""
    return image[:, ::-1], flip_boxes(boxes)


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
    after each step, as PIL's ImageEnhance rounds: a fraction of a millisecond at 300x300 (docs/ssd.md section 7)."""
    image = cv2.convertScaleAbs(image, alpha=brightness)
    mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
    image = cv2.addWeighted(image, contrast, image, 0.0, (1 - contrast) * mean)
    gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, saturation, gray, 1 - saturation, 0.0)


def color_jitter(image: np.ndarray, params: Draw) -> np.ndarray:
    """The draw's colour factors applied to RGB uint8 [H, W, 3]: brightness, contrast, saturation
    (adjust_bcs), then the hue (shift_hue). The identity factors (evaluation) skip the arithmetic."""
    if params.jitter == NO_AUGMENTATION.jitter:
        return image
    return shift_hue(adjust_bcs(image, params.brightness, params.contrast, params.saturation), params.hue_shift)


def augment_boxes(params: Draw, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The boxes [n, 4] and labels [n] of the image as the draw's crop and flip leave it (crop_boxes,
    flip_boxes): what every path ships as the sample's ground truth."""
    if params.crop is not None:
        boxes, labels = crop_boxes(boxes, labels, params.window)
    return (flip_boxes(boxes) if params.flip else boxes), labels


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> RGB uint8 [size, size, 3], bilinear, antialiased when shrinking.

    PIL's bilinear filter (torchvision's uint8 port of it, within 1 uint8 level of PIL), which widens
    with the scale when shrinking: the filter NVIDIA's SSD trained with and DALI's fn.resize applies;
    why not OpenCV's INTER_LINEAR or INTER_AREA: docs/ssd.md section 7.
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
    """The PyTorch path's sample: callable (image RGB uint8 [H, W, 3], boxes [n, 4] normalised xyxy,
    labels [n], params: the sample's Draw (draws.draw; NO_AUGMENTATION for evaluation))
    -> (image [3, size, size], boxes float32 [n, 4], labels int64 [n]); the image is uint8 (normalised
    later, on the device: `normalise`), or with normalised=True ImageNet-normalised float32.
    Applies the draw in its order: crop, flip, resize, colour jitter; draws nothing itself."""

    def __init__(self, size: int = 300, normalised: bool = False):
        self.size, self.normalised = size, normalised

    def __call__(self, image, boxes, labels, params: Draw = NO_AUGMENTATION):
        if params.crop is not None:
            image, boxes, labels = apply_crop(image, boxes, labels, params.window)
        if params.flip:
            image, boxes = hflip(image, boxes)
        image = color_jitter(resize(np.ascontiguousarray(image), self.size), params)
        chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        return (
            normalise(chw) if self.normalised else chw,
            torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )
