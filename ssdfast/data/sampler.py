"""The epoch order of every data path: which images a rank reads in which order each epoch, keyed by
(epoch, index) so the workers' draws (draws.py) follow the epoch, and where a restarted epoch resumes."""

from __future__ import annotations

import warnings
from collections.abc import Sized

from torch.utils.data import DistributedSampler, Sampler


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


def epoch_sampler(
    dataset: Sized, split: str, train: bool, batch_size: int, rank: int, world_size: int, seed: int
) -> tuple[EpochKeyedSampler, bool]:
    """The sampler of every data path (training: shuffled, sharded, whole batches; evaluation: every
    image once over the ranks), and whether the DataLoader drops the last batch."""
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
