"""What a training run stores in last.pt / best.pt and reads back to resume, and the epoch copies it
keeps (--keep-checkpoints). The file format itself, safe loading and atomic writes: ssdfast/machinery/checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ssdfast.machinery.checkpoint import (
    CheckpointError,
    check_categories,
    checkpoint_metadata,
    load_checkpoint,
    load_model_weights,
    model_state_dict,
)
from ssdfast.machinery.model_metadata import found, is_int
from ssdfast.training.optimizer import load_optimizer_state


def training_state(
    model: nn.Module,
    optimizer,
    scaler,
    *,
    model_name: str,
    epoch: int,
    category_ids,
    category_names,
    best_ap: float,
    args: dict,
    position: dict | None = None,
    world: int = 1,
    global_step: int | None = None,
) -> dict:
    """What train.py writes to last.pt/best.pt: weights, the category set they were trained on (checked
    by eval and at resume), and everything needed to continue (optimizer, scaler). `epoch`: the last
    finished epoch (-1: none yet); `position`: where the epoch in progress stands (training.epoch.EpochProgress's
    state_dict), None at an epoch end; `world`: the number of processes (the global batch is args' batch_size x world);
    `global_step`: the TensorBoard step the next iteration logs at (training.run_log.RunLog.step)."""
    return {
        "model": model.state_dict(),
        "model_name": model_name,
        "num_classes": len(category_ids),
        "category_ids": list(category_ids),
        "category_names": list(category_names),
        "epoch": epoch,
        "position": position,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "best_ap": best_ap,
        "args": args,
        "world": world,
        "global_step": global_step,
    }


@dataclass
class ResumePoint:
    """Where a resumed run continues (resume_training): the epoch, the best AP so far, the position inside that
    epoch (None: from its first batch), how the checkpoint was trained (its arguments and number of processes)
    and the TensorBoard step it reached (world and global_step None for files written before they were stored)."""

    start_epoch: int
    best_ap: float
    position: dict | None
    args: dict = field(default_factory=dict)
    world: int | None = None
    global_step: int | None = None


def restore_optimizer(optimizer, saved: dict, path: str | Path) -> None:
    """The momentum buffers of a checkpoint's optimizer state `saved` into this run's `optimizer`, whose
    settings stay this run's (load_optimizer_state); CheckpointError when the parameter groups differ."""
    try:
        load_optimizer_state(optimizer, saved)
    except ValueError as error:  # torch's message: another number or size of parameter groups
        raise CheckpointError(
            f"{path}: its optimizer state does not fit this run ({error}); was --no-bn-weight-decay given to "
            "one run and not the other? Use the same flags or --no-resume"
        ) from error


def resume_training(
    path: str | Path,
    model: nn.Module,
    optimizer,
    scaler,
    *,
    model_name: str,
    category_names,
    check_names: bool = True,
    data="the dataset",
) -> ResumePoint:
    """Load a training_state into model, optimizer and scaler -> where to continue (ResumePoint).
    Refuses (CheckpointError) a checkpoint of another model, class count or category set."""
    device = next(model.parameters()).device
    ckpt = load_checkpoint(path, map_location=device)
    state = model_state_dict(ckpt, path)
    meta = checkpoint_metadata(path, ckpt, state)  # checked key by key
    if meta["model_name"] != model_name or meta["num_classes"] != len(category_names):
        raise CheckpointError(
            f"{path} holds {meta['model_name']} with {meta['num_classes']} classes, not "
            f"{model_name} with {len(category_names)}: use another --save-folder or --no-resume"
        )
    check_categories(meta["category_names"] or [], category_names, path, data, compare_names=check_names)
    load_model_weights(model, state, path)
    restore_optimizer(optimizer, ckpt["optimizer"], path)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    position = resume_position(path, ckpt)
    return ResumePoint(
        start_epoch=position["epoch"] if position else ckpt["epoch"] + 1,
        best_ap=ckpt.get("best_ap", -1.0),
        position=position,
        args=ckpt.get("args") or {},
        world=ckpt.get("world") or (position or {}).get("world"),
        global_step=ckpt.get("global_step"),
    )


def keep_epoch_copy(last: str | Path, epoch: int, keep: int) -> None:
    """Keep `last` as epoch_NNN.pt (a hard link: no copy, no extra space while last.pt is unchanged)
    and delete the epoch_*.pt files beyond the newest `keep`."""
    last = Path(last)
    copy = last.with_name(f"epoch_{epoch:03d}.pt")
    try:
        copy.unlink(missing_ok=True)
        try:
            os.link(last, copy)
        except OSError:  # a file system without hard links
            shutil.copy2(last, copy)
    except OSError as error:
        raise CheckpointError(f"cannot keep {copy.name} in {last.parent}: {error.strerror or error}") from error
    kept = sorted(last.parent.glob("epoch_[0-9][0-9][0-9]*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for old in kept[:-keep]:
        old.unlink(missing_ok=True)


# What a training run writes in its save folder (tensorboard/ only when it is the default, inside it).
RUN_OUTPUTS = (
    "last.pt",
    "best.pt",
    "epoch_[0-9]*.pt",
    "log.jsonl",
    "args.json",
    "results.png",
    "pr.png",
    "train_batch0.jpg",
    "val_batch0_labels.jpg",
    "val_batch0_pred.jpg",
    "confusion_matrix.png",
    "confusion_matrix.json",
    "tensorboard",
)


def set_aside_previous_run(folder: str | Path) -> Path | None:
    """--no-resume in a folder that holds a run: move that run's outputs (RUN_OUTPUTS) into
    folder/previous_run_<time>/, so the new run starts clean and overwrites nothing (a stale best.pt or old
    epoch copies would otherwise stand beside the new run's files) -> that folder, or None if there was no run."""
    folder = Path(folder)
    found = sorted({p for pattern in RUN_OUTPUTS for p in folder.glob(pattern)})
    found = [p for p in found if not (p.is_dir() and not any(p.iterdir()))]  # e.g. the tensorboard/ just made
    if not found:
        return None
    aside = folder / time.strftime("previous_run_%Y%m%d_%H%M%S")
    while aside.exists():  # two starts within one second
        aside = aside.with_name(aside.name + "_")
    aside.mkdir()
    for path in found:
        path.rename(aside / path.name)
    return aside


def resume_position(path, ckpt: dict) -> dict | None:
    """The checkpoint's position in its epoch ({"epoch", "iteration", ...}), or None after a finished epoch
    (ckpt["epoch"]), each checked before the run counts with them: CheckpointError naming the key."""
    position, epoch = ckpt.get("position"), ckpt.get("epoch")
    if position is not None and not (
        isinstance(position, dict)
        and is_int(position.get("epoch"), 0, 10**9)
        and is_int(position.get("iteration"), 0, 10**12)
    ):
        raise CheckpointError(
            f"{path}: its 'position' must be null or {{'epoch', 'iteration'}} integers >= 0 (found "
            f"{found(ckpt, 'position')}): not a last.pt that ssdfast wrote"
        )
    if position is None and not is_int(epoch, -1, 10**9):
        raise CheckpointError(f"{path}: its 'epoch' must be an integer >= -1 (found {found(ckpt, 'epoch')})")
    return position
