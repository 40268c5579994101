"""The PyTorch path's colour jitter (transforms.adjust_bcs + shift_hue, OpenCV on uint8) as batched
tensor ops with per-image factors, for the GPU data path: the same code runs on CPU and CUDA tensors.

Each step copies OpenCV's uint8 arithmetic: float32 products rounded half to even and saturated after
every step, grey as OpenCV's fixed-point BT.601 weights, and the HSV round trip of cvtColor with its
integer division tables. So the result equals OpenCV's up to ties decided differently (OpenCV may
fuse a multiply-add): tests/test_gpu_data.py measures it.
Costs about a dozen elementwise passes over [B, 3, H, W]: memory-bound, well below the step on a GPU.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

HSV_SHIFT = 12  # OpenCV's fixed-point bits for the 8-bit RGB -> HSV conversion
HUE_RANGE = 180  # OpenCV's 8-bit hue units per turn
# Which of (v, v(1-s), v(1-sf), v(1-s(1-f))) each of r, g, b takes in each hue sector (OpenCV's table, as r, g, b).
SECTOR_RGB = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))


def saturate(x: Tensor) -> Tensor:
    """OpenCV's saturate_cast<uchar> of floats: round half to even, clip to [0, 255] (kept float)."""
    return x.round().clamp_(0, 255)


def gray(rgb: Tensor) -> Tensor:
    """[B, 3, H, W] uint8-valued float -> [B, H, W] int32: cvtColor(RGB2GRAY)'s fixed-point weights, exactly."""
    r, g, b = rgb.to(torch.int32).unbind(1)
    return (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14


def per_image(values: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1] float32, to scale a batch of images image by image."""
    return values.to(torch.float32).view(-1, 1, 1, 1)


def adjust_bcs(images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] and factors [B] -> uint8-valued float32 [B, 3, H, W]: transforms.adjust_bcs
    (convertScaleAbs, addWeighted towards the mean grey, addWeighted towards each pixel's grey)."""
    x = saturate(images.to(torch.float32) * per_image(brightness))
    mean = gray(x).to(torch.float64).mean(dim=(1, 2))
    x = saturate(x * per_image(contrast) + per_image((1 - contrast.double()) * mean))
    grey = gray(x).unsqueeze(1).to(torch.float32)
    return saturate(x * per_image(saturation) + grey * per_image(1 - saturation.double()))


@functools.lru_cache(maxsize=16)
def division_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """OpenCV's RGB2HSV_b tables: round((255 << 12) / v) for saturation, round((180 << 12) / (6 d)) for hue.
    Made once per device (the tables and sector_table are reused by every batch, without a host copy)."""
    i = torch.arange(256, dtype=torch.float64, device=device)
    sdiv = torch.where(i > 0, ((255 << HSV_SHIFT) / i).round(), 0.0).to(torch.int32)
    hdiv = torch.where(i > 0, ((HUE_RANGE << HSV_SHIFT) / (6 * i)).round(), 0.0).to(torch.int32)
    return sdiv, hdiv


def rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """uint8-valued [B, 3, H, W] -> int32 h (0..179), s, v (0..255) [B, H, W]: cvtColor(RGB2HSV), exactly."""
    r, g, b = rgb.to(torch.int32).unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    sdiv, hdiv = division_tables(rgb.device)
    half = 1 << (HSV_SHIFT - 1)
    s = (diff * sdiv[v] + half) >> HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff] + half) >> HSV_SHIFT
    return torch.where(h < 0, h + HUE_RANGE, h), s, v


@functools.lru_cache(maxsize=16)
def sector_table(device: torch.device) -> Tensor:
    """SECTOR_RGB as a [6, 3] int64 tensor on `device`, made once per device (a host copy waits for the stream)."""
    return torch.tensor(SECTOR_RGB, device=device)


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """int32 h, s, v [B, H, W] -> uint8-valued float32 [B, 3, H, W]: cvtColor(HSV2RGB) as OpenCV's
    vectorised loop computes it, in float32 and truncated (its scalar loop, used for the last few pixels
    of an image only, rounds instead: those can differ by one level)."""
    sat, val = s.to(torch.float32) * (1.0 / 255.0), v.to(torch.float32) * (1.0 / 255.0)
    hue = h.to(torch.float32) * (6.0 / HUE_RANGE)
    sector = hue.trunc()
    f = hue - sector
    table = torch.stack([val, val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))])  # [4, B, H, W]
    pick = sector_table(h.device)[sector.long() % 6]  # [B, H, W, 3]
    rgb = torch.gather(table, 0, pick.permute(3, 0, 1, 2))  # [3, B, H, W]
    return (rgb.transpose(0, 1) * 255.0).trunc().clamp_(0, 255)


def shift_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """uint8-valued [B, 3, H, W] and integer shifts [B] (OpenCV hue units) -> hue turned image by image.
    As transforms.shift_hue, an image with no shift keeps its pixels (the HSV round trip would move them)."""
    h, s, v = rgb_to_hsv(images)
    turned = hsv_to_rgb((h + shifts.to(torch.int32).view(-1, 1, 1)) % HUE_RANGE, s, v)
    return torch.where(shifts.view(-1, 1, 1, 1) != 0, turned, images.to(torch.float32))


def color_jitter(images: Tensor, factors: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] and factors [B, 4] (brightness, contrast, saturation, hue shift: draws.Draw.jitter)
    -> uint8-valued float32 [B, 3, H, W]."""
    brightness, contrast, saturation, shifts = factors.unbind(1)
    return shift_hue(adjust_bcs(images, brightness, contrast, saturation), shifts.round())
