"""Checkpoint files: atomic save (through ssdfast.machinery.outputs), safe load, and reading the weights of any
supported format (ssdfast's, the older implementation's, NVIDIA's) for eval, detect and fine-tuning.
What a training run stores and reads back lives in ssdfast/training/state.py.

Formats understood by load_model_weights:
  * ssdfast:   {"model": state_dict, "model_name", "num_classes", "category_ids", "category_names", "epoch",
                "optimizer", "scaler", "best_ap", "args"}
  * the older implementation:  {"epoch", "model_state_dict", "optimizer", "scheduler"}  (SSDLite: extra loc.6/conf.6, ignored)
  * NVIDIA DeepLearningExamples SSD300: {"model": state_dict, ...}, keys possibly prefixed "module."
  * a bare state dict.
Loading never runs code from the file: torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ssdfast.machinery.outputs import OutputError, atomic_write
from ssdfast.models.registry import model_of_state

# The older implementation's unused seventh SSDLite head.
IGNORED_KEYS = ("loc.6.", "conf.6.")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def state_bytes(state) -> int:
    """The tensor bytes inside a (nested) checkpoint state: about its size on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically (ssdfast.machinery.outputs.atomic_output: temporary, fsync, rename).

    A run killed at any moment leaves either the old file or the new one, never a torn one. A full
    disk, an unwritable or vanished folder raises CheckpointError naming the folder and the space
    needed (the old file stays: until the rename both must fit), and leaves no temporary file behind.
    """
    needed = state_bytes(state) + 2**20  # + headroom for the pickled metadata and the zip directory
    try:
        atomic_write(path, lambda f: torch.save(state, f), "checkpoint", needed)
    except OutputError as error:
        raise CheckpointError(str(error)) from error


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint dict safely (weights_only). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # argparse.Namespace: NVIDIA's checkpoints may carry their args; it holds plain values.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            " (truncated or corrupted file, or not a PyTorch checkpoint)"
        ) from error
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def model_state_dict(ckpt: dict, path: str | Path = "<checkpoint>") -> dict:
    """The model weights inside any supported checkpoint format, with 'module.' prefixes removed
    and the older implementation's unused SSDLite head dropped."""
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        state = ckpt["model"]
    elif "model_state_dict" in ckpt:
        state = ckpt["model_state_dict"]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise CheckpointError(
            f"{path}: no model weights found (expected a 'model' or 'model_state_dict' entry, or a bare state "
            f"dict); top-level keys: {sorted(ckpt)[:10]}"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_KEYS)}


def infer_num_classes(state: dict) -> int:
    """C (without background) from the first heads: conf.0 has nd * (C + 1) outputs, loc.0 has nd * 4.

    The output layer is the last one with a bias inside the head (SSDLite heads are depthwise conv,
    BN, ReLU6, 1x1 conv; state dicts keep module order)."""

    def last_bias(prefix):
        biases = [v for k, v in state.items() if k.startswith(prefix) and k.endswith("bias")]
        if not biases:
            raise CheckpointError(f"cannot infer the number of classes: no {prefix}* head in the weights")
        return biases[-1]

    boxes_per_location = last_bias("loc.0.").numel() // 4
    return last_bias("conf.0.").numel() // boxes_per_location - 1


def infer_model_name(state: dict, path: str | Path = "<checkpoint>") -> str:
    """The registry name of the model `state` holds, from its parameter names (ssdfast/models/registry.py:
    each entry's signature): for files that do not store it (the older implementation's, NVIDIA's)."""
    try:
        return model_of_state(state)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error


def load_model_weights(model: nn.Module, state: dict, path: str | Path = "<checkpoint>") -> None:
    """Copy `state` into `model`, with an error naming the file and the mismatching keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:

        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"

        raise CheckpointError(
            f"weights in {path} do not fit {model.__class__.__name__} (num_classes={getattr(model, 'num_classes', '?')}):"
            f" missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; wrong shapes: {show(wrong_shape)}"
        )
    model.load_state_dict(state)


def check_categories(trained: list[str], dataset: list[str], weights, data, compare_names: bool = True) -> None:
    """Refuse weights whose class labels mean other categories than the dataset's.

    Labels are 1..C in the order of sorted category ids, so two category sets with the same count but
    another order or other names would silently swap meanings. `trained`: the checkpoint's category
    names (COCO's 80 for the older implementation's and NVIDIA's checkpoints); `dataset`: the dataset's. With
    compare_names=False (--ignore-category-names) only the counts must agree."""
    if len(trained) != len(dataset):
        raise CheckpointError(f"{weights} predicts {len(trained)} classes but {data} has {len(dataset)} categories")
    if not compare_names or list(trained) == list(dataset):
        return
    differ = [
        f"label {i + 1}: '{a}' in the weights, '{b}' in the data"
        for i, (a, b) in enumerate(zip(trained, dataset))
        if a != b
    ]
    raise CheckpointError(
        f"{weights} was trained on other categories than {data} has ({len(differ)} of "
        f"{len(dataset)} labels differ; {'; '.join(differ[:5])}{'; ...' if len(differ) > 5 else ''}). "
        "Labels follow sorted category ids; pass --ignore-category-names to use the weights anyway"
    )
