"""What a training run stores in last.pt / best.pt and reads back to resume, and the epoch copies it
keeps (--keep-checkpoints). The file format itself, safe loading and atomic writes: ssdfast/checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from ..checkpoint import CheckpointError, check_categories, load_checkpoint
from .optimizer import load_optimizer_state


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
) -> dict:
    """What train.py writes to last.pt/best.pt: weights, the category set they were trained on (checked
    by eval and at resume), and everything needed to continue (optimizer, scaler). `epoch`: the last
    finished epoch (-1: none yet); `position`: where the epoch in progress stands (training.epoch.EpochProgress's
    state_dict), None at an epoch end."""
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
    }


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
) -> tuple[int, float, dict | None]:
    """Load a training_state into model, optimizer and scaler; (the epoch to continue at, best AP so far,
    the position inside that epoch or None to start it from its first batch).
    Refuses (CheckpointError) a checkpoint of another model, class count or category set."""
    device = next(model.parameters()).device
    ckpt = load_checkpoint(path, map_location=device)
    if ckpt.get("model_name") != model_name or ckpt.get("num_classes") != len(category_names):
        raise CheckpointError(
            f"{path} holds {ckpt.get('model_name')} with {ckpt.get('num_classes')} classes, not "
            f"{model_name} with {len(category_names)}: use another --save-folder or --no-resume"
        )
    check_categories(ckpt.get("category_names", []), category_names, path, data, compare_names=check_names)
    model.load_state_dict(ckpt["model"])
    try:
        load_optimizer_state(optimizer, ckpt["optimizer"])
    except ValueError as error:  # torch's message: another number or size of parameter groups
        raise CheckpointError(
            f"{path}: its optimizer state does not fit this run ({error}); was --no-bn-weight-decay given to "
            "one run and not the other? Use the same flags or --no-resume"
        ) from error
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    position = ckpt.get("position")
    return (position["epoch"] if position else ckpt["epoch"] + 1), ckpt.get("best_ap", -1.0), position


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
