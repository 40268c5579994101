"""A run's data: this rank's shard of the training set, of the validation set when the run evaluates,
and what the dataset says about itself (categories, image count)."""

from __future__ import annotations

from dataclasses import dataclass

from ssdfast.data import build_loader
from ssdfast.data.torch_loader import DatasetInfo, Loader
from ssdfast.training.config import TrainConfig
from ssdfast.training.placement import Placement


@dataclass(frozen=True)
class RunData:
    """train_loader, val_loader (None: the run never evaluates) and info (train_loader.info)."""

    train_loader: Loader
    val_loader: Loader | None
    info: DatasetInfo

    @classmethod
    def load(cls, config: TrainConfig, placement: Placement) -> RunData:
        data = config.data
        common = dict(
            batch_size=config.schedule.batch_size,
            num_workers=data.num_workers,
            rank=placement.rank,
            world_size=placement.world,
            seed=config.run.seed,
            max_boxes=data.max_boxes,
            backend=data.data_backend,
            device=placement.device,
            channels_last=placement.channels_last,
            data_format=data.data_format,
            max_pixels=data.max_pixels,
            max_image_bytes=data.max_image_bytes,
            allow_outside_paths=data.allow_outside_paths,
        )
        train = build_loader(
            data.data_path, "train", train=True, ann_file=data.train_ann, image_dir=data.train_images, **common
        )
        check_categories(data.data_path, train.info)
        val = None
        if config.evaluation.eval_every > 0:
            val = build_loader(
                data.data_path, "val", train=False, ann_file=data.val_ann, image_dir=data.val_images, **common
            )
        return cls(train_loader=train, val_loader=val, info=train.info)

    def steps_per_epoch(self, iters_per_epoch: int | None) -> int:
        """Optimizer steps in one epoch of this rank (--iters-per-epoch caps it)."""
        steps = len(self.train_loader)
        return steps if iters_per_epoch is None else min(steps, iters_per_epoch)


def check_categories(data_path, info: DatasetInfo) -> None:
    """The dataset's categories must fit the checkpoint the run will write (the rules every load applies,
    ssdfast.machinery.model_metadata): refused here, before a model of that size is built and trained into a
    file nothing would load. ValueError naming the key."""
    from ssdfast.machinery.model_metadata import MODEL_RULES, found, problem

    meta = {
        "num_classes": len(info.category_names),
        "category_names": list(info.category_names),
        "category_ids": list(info.category_ids),
    }
    bad = problem(meta, {key: MODEL_RULES[key] for key in meta})
    if bad:
        key, must = bad
        raise ValueError(
            f"the categories of {data_path} cannot go in a checkpoint: its {key} must be {must} "
            f"(found {found(meta, key)})"
        )
