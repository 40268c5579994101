"""What every data path's loader is: the Loader protocol the engine and the tools use, the DatasetInfo
it carries, and TorchLoader, the PyTorch path's Loader, whose epoch and restart position the GPU and
DALI paths' loaders inherit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from ssdfast.data.batch import Batch
from ssdfast.data.coco import CocoDetection


@dataclass(frozen=True)
class DatasetInfo:
    """What every data path knows about a split, built once from the checked CocoDetection."""

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
    """torch.utils.data path: a DataLoader whose sampler is sampler.EpochKeyedSampler. set_epoch reshuffles
    and re-keys the augmentation; a start_batch replays the same epoch from that batch on (same order,
    same augmentation draws)."""

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
