"""SSD default boxes (anchors), exactly as the checkpoints ssdfast loads were trained with (NVIDIA's SSD300,
the older implementation's SSDLite; docs/ssd.md section 1).

For each feature map k (size f_k, step s_k, scales S_k and S_k+1 in pixels of a `fig_size` image):
  * box shapes, in this order: (S_k, S_k), (S', S') with S' = sqrt(S_k S_k+1), then for every aspect
    ratio r a pair (S_k sqrt(r), S_k / sqrt(r)) and its transpose;
  * for each shape, for each location (row i, column j): centre ((j + 0.5) / fk, (i + 0.5) / fk) with
    fk = fig_size / s_k (note: 300 / 8 = 37.5, not 38: the published models were trained like that);
  * the (cx, cy, w, h) boxes are clamped to [0, 1].
The flattened order (map, shape, location) is the order of the heads' outputs (see models/ssd_base.py).
A spec also carries the box coding's variances: the offsets a model learns are relative to its anchors and
scaled by them, so encoding the training targets and decoding the outputs must use the same two numbers.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ssdfast.defaults import SSD_DEFAULTS, SSDDefaults  # noqa: F401  (SSD's constants: their home is defaults.py)


@dataclass(frozen=True)
class AnchorSpec:
    fig_size: int
    feature_sizes: tuple[int, ...]
    steps: tuple[int, ...]
    scales: tuple[int, ...]  # one more than feature maps
    aspect_ratios: tuple[tuple[int, ...], ...]
    center_variance: float = SSD_DEFAULTS.center_variance  # box coding: centre offsets are divided by this
    size_variance: float = SSD_DEFAULTS.size_variance  # ... and log-size ratios by this

    @property
    def variances(self) -> tuple[float, float]:
        """(center_variance, size_variance): what ops.match_encode (training targets) and ops.box_decode
        (post-processing, export) take, passed from here so that they always agree."""
        return self.center_variance, self.size_variance

    @property
    def boxes_per_location(self) -> list[int]:
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    @property
    def num_anchors(self) -> int:
        return sum(n * f * f for n, f in zip(self.boxes_per_location, self.feature_sizes))


SSD300_RESNET50 = AnchorSpec(
    fig_size=300,
    feature_sizes=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    scales=(21, 45, 99, 153, 207, 261, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)  # 8732 anchors

SSDLITE300 = AnchorSpec(
    fig_size=300,
    feature_sizes=(19, 10, 5, 3, 2, 1),
    steps=(16, 32, 64, 100, 150, 300),
    scales=(60, 105, 150, 195, 240, 285, 330),
    aspect_ratios=((2, 3),) * 6,
)  # 3000 anchors


@functools.cache
def _anchors_xywh(spec: AnchorSpec) -> Tensor:
    boxes = []
    for k, size in enumerate(spec.feature_sizes):
        fk = spec.fig_size / spec.steps[k]
        s1 = spec.scales[k] / spec.fig_size
        s2 = spec.scales[k + 1] / spec.fig_size
        shapes = [(s1, s1), (math.sqrt(s1 * s2),) * 2]
        for r in spec.aspect_ratios[k]:
            w, h = s1 * math.sqrt(r), s1 / math.sqrt(r)
            shapes += [(w, h), (h, w)]
        for w, h in shapes:
            for i, j in itertools.product(range(size), repeat=2):
                boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return torch.tensor(boxes, dtype=torch.float32).clamp_(0.0, 1.0)


def default_boxes(spec: AnchorSpec, order: str = "xyxy") -> Tensor:
    """Default boxes of `spec`, computed once and cached: Tensor[A, 4] float32 on the CPU, normalised
    to [0, 1], as "xyxy" (corners, what the ops take) or "xywh" (centre and size). Returns a copy."""
    xywh = _anchors_xywh(spec)
    if order == "xywh":
        return xywh.clone()
    if order == "xyxy":
        return torch.cat([xywh[:, :2] - 0.5 * xywh[:, 2:], xywh[:, :2] + 0.5 * xywh[:, 2:]], dim=1)
    raise ValueError(f"order must be 'xyxy' or 'xywh', got {order!r}")
