"""The data of an INT8 export: calibration images from the training split, and the AP check on
validation images disjoint from them.

Box-for-box equality does not fit INT8 (8 bits move scores and boxes a little, and NMS then keeps
other boxes), so an INT8 file is held to COCO AP instead: its AP on the validation images may be at
most ``max_drop`` AP points (1 point = 0.01 AP) below the float PyTorch model's on the same images.
Both sets are spread evenly over their split (every k-th image), so a split sorted by class or scene
is sampled across, and the same flags give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ssdfast.data.batch import Collate
from ssdfast.data.coco import CocoDetection
from ssdfast.data.formats import resolve_source
from ssdfast.data.torch_loader import TorchLoader
from ssdfast.defaults import DetectionPolicy
from ssdfast.evaluation.loop import evaluate

BATCH = 8  # images per calibration and validation batch


@dataclass(frozen=True)
class Int8Data:
    """calibration: normalised image batches [b, 3, 300, 300] from the training split; validation: a
    loader of validation images (with its DatasetInfo, for COCO AP)."""

    calibration: list[Tensor]
    validation: TorchLoader


def _spread(length: int, n: int) -> list[int]:
    """n indices (or all, if fewer) spread evenly over range(length)."""
    if n >= length:
        return list(range(length))
    return sorted({round(i * (length - 1) / max(n - 1, 1)) for i in range(n)})


def _subset(dataset: CocoDetection, indices: list[int]) -> TorchLoader:
    sampler = [(0, i) for i in indices]  # (epoch, index) keys, as the loaders' samplers give them
    return TorchLoader(
        dataset, DataLoader(dataset, batch_size=BATCH, sampler=sampler, collate_fn=Collate(keep_batch_size=False))
    )


def _dataset(data_path, split: str, data_format: str | None) -> CocoDetection:
    source = resolve_source(data_path, split, data_format, None, None)
    return CocoDetection(split=split, train=False, seed=0, source=source)


def int8_data(
    data_path: str | Path, data_format: str | None, calibration_images: int, validation_images: int
) -> Int8Data:
    """Calibration batches from the train split and a loader of validation images from the val split
    of the dataset at `data_path`. Raises ValueError when the two share an image file."""
    train, val = _dataset(data_path, "train", data_format), _dataset(data_path, "val", data_format)
    calibrate, check = _spread(len(train), calibration_images), _spread(len(val), validation_images)
    shared = {(train.image_dir / train.records[i].file_name).resolve() for i in calibrate} & {
        (val.image_dir / val.records[i].file_name).resolve() for i in check
    }
    if shared:
        raise ValueError(
            f"the calibration (train) and validation (val) images share {len(shared)} file(s), e.g. "
            f"{sorted(shared)[0]}: the AP check needs images the calibration has not seen"
        )
    # normalised as the file's input contract says (the loader gives uint8; Batch.to normalises)
    batches = [batch.to("cpu").images for batch in _subset(train, calibrate) if len(batch.images)]
    if not batches:
        raise ValueError(f"no readable training image in {data_path} to calibrate with")
    return Int8Data(batches, _subset(val, check))


def coco_ap(detector, loader: TorchLoader, policy: DetectionPolicy) -> float:
    """COCO AP (0-1) of `detector` (a PyTorch SSD, post-processed with `policy`, or a Deployed) on `loader`."""
    stats, *_ = evaluate(detector, loader, torch.device("cpu"), policy=policy, is_main=False)
    return float(stats["AP"]) if stats else 0.0
