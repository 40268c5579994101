"""The batch both data paths produce, and the collate that pads ground truth to a fixed count.

Fixed G (padding with label 0) gives the training step static shapes: matching runs on the device
inside the step, and the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ssdfast.data.transforms import normalise
from ssdfast.defaults import DEFAULT_MAX_BOXES


@dataclass
class Batch:
    images: Tensor  # [B, 3, H, W]: uint8 from the PyTorch path (normalised by `to`), normalised float from DALI
    boxes: Tensor  # [B, G, 4] normalised xyxy, zeros where padded
    labels: Tensor  # [B, G] int64, 1..C, 0 = padding
    image_ids: Tensor  # [B] int64 COCO image ids
    sizes: Tensor  # [B, 2] int64 original (height, width)
    skipped: tuple[str, ...] = ()  # paths of unreadable images left out of (or replaced in) this batch

    @classmethod
    def empty(cls, max_boxes: int, skipped: tuple[str, ...]) -> Batch:
        """A batch of no image: every image of it was unreadable (`skipped`); the loops pass over it."""
        return cls(
            torch.zeros(0, 3, 1, 1),
            torch.zeros(0, max_boxes, 4),
            torch.zeros(0, max_boxes, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 2, dtype=torch.long),
            skipped,
        )

    def to(self, device, channels_last: bool = False, dtype: torch.dtype | None = None) -> Batch:
        """The batch on `device`, images ImageNet-normalised there (uint8 crosses the bus: 4x fewer bytes)."""
        images = self.images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalise(images)
        if dtype is not None:
            images = images.to(dtype)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return Batch(
            images,
            self.boxes.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.image_ids,
            self.sizes,
            self.skipped,
        )


def pad_targets(boxes: list[Tensor], labels: list[Tensor], max_boxes: int) -> tuple[Tensor, Tensor]:
    """Per-image boxes [n_i, 4] and labels [n_i] -> [B, G, 4] and [B, G] (G = max_boxes, label 0 = padding).
    Images with more than G boxes keep their first G, with a warning."""
    out_boxes = torch.zeros(len(boxes), max_boxes, 4)
    out_labels = torch.zeros(len(boxes), max_boxes, dtype=torch.long)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        if len(b) > max_boxes:
            warnings.warn(
                f"an image has {len(b)} boxes; only the first {max_boxes} are used (raise --max-boxes)", stacklevel=2
            )
            b, l = b[:max_boxes], l[:max_boxes]
        out_boxes[i, : len(b)] = b
        out_labels[i, : len(l)] = l
    return out_boxes, out_labels


def split_unreadable(samples: list[dict]) -> tuple[list[dict], tuple[str, ...]]:
    """(the readable samples, the paths of those a worker could not read: {"unreadable": path})."""
    return [s for s in samples if "unreadable" not in s], tuple(s["unreadable"] for s in samples if "unreadable" in s)


def with_copies(good: list, missing: int) -> list:
    """`good` and `missing` copies of its items in turn: a training batch keeps its size when images are unreadable."""
    return good + [good[i % len(good)] for i in range(missing)]


class Collate:
    """Stack samples into a Batch. Samples {"unreadable": path} (corrupt images) are recorded in
    Batch.skipped; for training (`keep_batch_size`) they are replaced by copies of readable samples
    of the same batch so every batch has the same shape, for evaluation they are left out."""

    def __init__(self, max_boxes: int = DEFAULT_MAX_BOXES, keep_batch_size: bool = True):
        self.max_boxes = max_boxes
        self.keep_batch_size = keep_batch_size

    def __call__(self, samples: list[dict]) -> Batch:
        good, skipped = split_unreadable(samples)
        if not good:  # the whole batch was unreadable: an empty batch, which the engine passes over
            return Batch.empty(self.max_boxes, skipped)
        if self.keep_batch_size:
            good = with_copies(good, len(skipped))
        boxes, labels = pad_targets([s["boxes"] for s in good], [s["labels"] for s in good], self.max_boxes)
        return Batch(
            images=torch.stack([s["image"] for s in good]),
            boxes=boxes,
            labels=labels,
            image_ids=torch.tensor([s["image_id"] for s in good], dtype=torch.long),
            sizes=torch.tensor([s["size"] for s in good], dtype=torch.long),
            skipped=skipped,
        )
