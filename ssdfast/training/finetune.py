"""Fine-tuning: start a detector for a dataset's categories from a detector trained on others.

Everything that does not depend on the categories is kept: the backbone, the extra layers, the box
regression heads and the class heads' inner layers. The class heads' output layers predict one row
per (category, box shape): rows of categories whose names the two sets share are kept, background's too,
and the rows of new categories keep their fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ssdfast.machinery.checkpoint import CheckpointError


def class_rows(category: int, boxes_per_location: int) -> slice:
    """Output channels of one category (0 = background) in a class head: channel = category * nd + shape."""
    return slice(category * boxes_per_location, (category + 1) * boxes_per_location)


def class_output_layers(state: dict) -> set[str]:
    """Keys of each class head's output layer: the last module under conf.<i>. (state dicts keep module
    order; SSDLite's heads have a depthwise conv and a BatchNorm before it)."""
    last: dict[str, str] = {}
    for key in state:
        if key.startswith("conf."):
            head = ".".join(key.split(".")[:2])
            last[head] = key.rsplit(".", 1)[0]
    return {key for key in state if key.rsplit(".", 1)[0] in last.values()}


def transfer_weights(
    model: nn.Module, source: dict[str, torch.Tensor], source_names: list[str], target_names: list[str]
) -> str:
    """Copy `source` (a state dict of the same architecture trained on `source_names`) into `model` (built
    for `target_names`); returns a one-line report of what was kept. CheckpointError when the weights are
    of another architecture."""
    own = model.state_dict()
    foreign = sorted(set(own) ^ set(source))
    if foreign:
        raise CheckpointError(
            f"the weights are of another model (keys {', '.join(foreign[:4])}...): fine-tune from "
            f"a checkpoint of the same --model"
        )
    outputs = class_output_layers(own)
    for key in sorted(outputs):  # names and rows must agree, or rows would be read as the wrong categories
        rows, own_rows = source[key].shape[0], own[key].shape[0]
        if rows % (len(source_names) + 1) or own_rows % (len(target_names) + 1):
            raise CheckpointError(
                f"{key}: {rows} rows in the weights for {len(source_names)} category names, {own_rows} in the "
                f"model for {len(target_names)}: the rows are not (names + background) x box shapes"
            )
        if rows // (len(source_names) + 1) != own_rows // (len(target_names) + 1):
            raise CheckpointError(
                f"{key}: {rows // (len(source_names) + 1)} box shapes per location in the weights, "
                f"{own_rows // (len(target_names) + 1)} in the model: fine-tune from a checkpoint of the same --model"
            )
    index = {name: i + 1 for i, name in enumerate(source_names)}
    shared = [(j + 1, index[name]) for j, name in enumerate(target_names) if name in index]
    for key, tensor in own.items():
        if key in outputs:  # rows by category: channel = category * nd + shape
            nd = tensor.shape[0] // (len(target_names) + 1)
            for target, origin in [(0, 0), *shared]:  # background stays background
                tensor[class_rows(target, nd)] = source[key][class_rows(origin, nd)]
        elif source[key].shape == tensor.shape:
            tensor.copy_(source[key])
        else:
            raise CheckpointError(
                f"{key}: shape {tuple(source[key].shape)} in the weights, {tuple(tensor.shape)} "
                "in the model, outside the class heads' output layers"
            )
    model.load_state_dict(own)
    names = ", ".join(target_names[j - 1] for j, _ in shared[:8]) + (", ..." if len(shared) > 8 else "")
    return (
        f"fine-tuning: backbone, extra layers and box heads kept; class heads: {len(shared)} of "
        f"{len(target_names)} categories matched by name ({names or 'none'}), the others start fresh"
    )


def load_source(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata with model_name and category_names) of any detector checkpoint eval.py reads
    (ssdfast's, the older implementation's, NVIDIA's). Exported .onnx/.pt2 files hold no trainable weights."""
    from ssdfast.deploy.deployed import is_deployed
    from ssdfast.inference import load_detector

    if is_deployed(path):
        raise CheckpointError(f"{path} is an exported model: fine-tune from the checkpoint (.pt) it was exported from")
    model, meta = load_detector(path)
    return model.state_dict(), meta
