"""build_loader: one entry point for the three data paths (PyTorch, GPU, DALI), so the engine does not care
which one runs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssdfast.data.batch import Collate
from ssdfast.data.coco import CocoDetection
from ssdfast.data.formats import resolve_source
from ssdfast.data.image_files import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS
from ssdfast.data.sampler import epoch_sampler
from ssdfast.data.torch_loader import Loader, TorchLoader
from ssdfast.defaults import DATA_BACKENDS, DEFAULT_MAX_BOXES
from ssdfast.machinery.preemption import end_workers_at_exit, ignore_stop_signals_in_workers
from ssdfast.machinery.runtime import pick_device


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
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    data_format: str | None = None,
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    backend: str = "pytorch",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_outside_paths: bool = False,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Loader:
    """A Loader of Batches for `split` of a dataset, sharded for (rank, world_size), from the data path
    `backend` (DATA_BACKENDS), every one with the same `info` (DatasetInfo), sampler and
    (seed, epoch, index) keyed draws. The dataset: data_path in the COCO, VOC or YOLO layout (data_format,
    detected when None), or the explicit COCO ann_file and image_dir (ssdfast.data.formats.resolve_source).
    max_pixels, max_image_bytes, allow_outside_paths: what files may be read (CocoDetection)."""
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
