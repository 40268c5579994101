"""build_loader: one entry point for both data paths, so the engine does not care which one runs."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ssdfast.data.batch import Batch, Collate
from ssdfast.data.coco import CocoDetection
from ssdfast.data.formats import resolve_source
from ssdfast.data.image_files import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS
from ssdfast.defaults import DATA_BACKENDS, DEFAULT_MAX_BOXES
from ssdfast.machinery.preemption import end_workers_at_exit, ignore_stop_signals_in_workers
from ssdfast.machinery.runtime import pick_device


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes indices r, r + world, ... so the ranks
    together cover every image exactly once (DistributedSampler would repeat some to even out)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochKeyedSampler(Sampler):
    """Yields (epoch, index) pairs: the epoch travels with every index to the workers, so workers
    started once (persistent_workers, no restart cost per epoch) still re-key the augmentation.
    `skip` drops the first indices of an epoch: a run restarted mid-epoch continues where it stopped."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch, self.skip = sampler, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, index) for position, index in enumerate(self.sampler) if position >= self.skip)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


@dataclass(frozen=True)
class DatasetInfo:
    """What both data paths know about a split, built once from the checked CocoDetection."""

    coco: COCO  # the checked annotations (pycocotools), for COCO evaluation
    category_ids: tuple[int, ...]  # dataset category id of label 1..C
    category_names: tuple[str, ...]
    num_images: int  # images this split reads (training: those with a usable box)
    dropped: dict  # what was left out at load, and why: {reason: count}
    data_format: str = "coco"  # what it was read from: "coco", "voc" or "yolo" (VOC adds VOC mAP to eval)

    @classmethod
    def of(cls, dataset: CocoDetection) -> DatasetInfo:
        return cls(
            dataset.coco,
            tuple(dataset.category_ids),
            tuple(dataset.category_names),
            len(dataset),
            dict(dataset.dropped),
            dataset.data_format,
        )


class Loader(Protocol):
    """What the engine and the tools use of a loader, whichever data path built it."""

    info: DatasetInfo

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle and re-key the augmentation for `epoch`; the next pass starts at batch `start_batch`."""

    def __len__(self) -> int:
        """Batches per (whole) epoch of this rank."""

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches, from start_batch on."""


class TorchLoader:
    """torch.utils.data path. set_epoch reshuffles (DistributedSampler) and re-keys the augmentation;
    a start_batch replays the same epoch from that batch on (same order, same augmentation draws)."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader):
        self.dataset, self.loader, self.info = dataset, loader, DatasetInfo.of(dataset)
        self.batches = len(loader)  # of a whole epoch (the sampler's skip shortens the DataLoader's len)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.dataset.set_epoch(epoch)
        self.loader.sampler.set_epoch(epoch, skip=start_batch * self.loader.batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        return iter(self.loader)


def build_loader(
    data_path: str | Path | None,
    split: str,
    *,
    train: bool,
    batch_size: int,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    max_boxes: int = DEFAULT_MAX_BOXES,
    dali: bool = False,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    fp16: bool = False,
    data_format: str | None = None,
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    backend: str = "pytorch",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_outside_paths: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Loader:
    """A Loader of Batches for `split` of a dataset, sharded for (rank, world_size), from the data path
    `backend` (DATA_BACKENDS; dali=True: "dali"), every one with the same `info` (DatasetInfo), sampler and
    (seed, epoch, index) keyed draws. The dataset: data_path in the COCO, VOC or YOLO layout (data_format,
    detected when None), or the explicit COCO ann_file and image_dir (ssdfast.data.formats.resolve_source).
    max_pixels, max_image_bytes, allow_outside_paths: what files may be read (CocoDetection)."""
    backend = "dali" if dali else backend
    if backend not in DATA_BACKENDS:
        raise ValueError(f"unknown data backend {backend!r}: choose one of {', '.join(DATA_BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # Every path starts from the same checked dataset: one validation, one count, one error for "nothing usable".
    source = resolve_source(data_path, split, data_format, ann_file, image_dir, allow_outside_paths)
    dataset = CocoDetection(
        split=split,
        train=train,
        seed=seed,
        source=source,
        max_pixels=max_pixels,
        allow_outside_paths=allow_outside_paths,
        max_image_bytes=max_image_bytes,
    )
    sampler, drop_last = epoch_sampler(dataset, split, train, batch_size, rank, world_size, seed)
    if num_workers > 0:
        end_workers_at_exit()  # they ignore SIGTERM: see there
    if backend == "dali":
        from ssdfast.data.dali import dali_loader

        device = pick_device(str(device))  # a plain "cuda" becomes the current device, not device 0
        return dali_loader(
            dataset,
            sampler,
            drop_last,
            batch_size=batch_size,
            num_workers=num_workers,
            device_id=device.index if device.type == "cuda" else None,  # None: DALI's CPU-only mode
            max_boxes=max_boxes,
            fp16=fp16,
            channels_last=channels_last,
        )
    if backend == "gpu":
        from ssdfast.data.gpu_pipeline import gpu_loader

        return gpu_loader(
            dataset,
            sampler,
            drop_last,
            batch_size=batch_size,
            num_workers=num_workers,
            device=pick_device(str(device)),
            max_boxes=max_boxes,
            fp16=fp16,
        )
    data_loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=Collate(max_boxes, keep_batch_size=train),
        drop_last=drop_last,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals_in_workers,
    )
    return TorchLoader(dataset, data_loader)


def epoch_sampler(
    dataset: CocoDetection, split: str, train: bool, batch_size: int, rank: int, world_size: int, seed: int
) -> tuple[EpochKeyedSampler, bool]:
    """The sampler of both the PyTorch and the GPU path (training: shuffled, sharded, whole batches;
    evaluation: every image once over the ranks), and whether the DataLoader drops the last batch."""
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        drop_last = len(sampler) >= batch_size
        if not drop_last:
            warnings.warn(
                f"{split}: only {len(sampler)} images per rank for a batch of {batch_size}; "
                "using one smaller batch per epoch",
                stacklevel=2,
            )
    else:
        sampler, drop_last = ShardSampler(len(dataset), rank, world_size), False
    return EpochKeyedSampler(sampler), drop_last
