"""Checkpoint files: atomic save (through ssdfast.machinery.outputs), safe load, and reading the weights of any
supported format (ssdfast's, the older implementation's, NVIDIA's) for eval, detect and fine-tuning.
What a training run stores and reads back lives in ssdfast/training/state.py.

Formats understood by load_model_weights:
  * ssdfast:   {"model": state_dict, "model_name", "num_classes", "category_ids", "category_names", "epoch",
                "optimizer", "scaler", "best_ap", "args"}
  * the older implementation:  {"epoch", "model_state_dict", "optimizer", "scheduler"}  (SSDLite: extra loc.6/conf.6, ignored)
  * NVIDIA DeepLearningExamples SSD300: {"model": state_dict, ...}, keys possibly prefixed "module."
  * a bare state dict.
Loading never runs code from the file (torch.load(weights_only=True)) and never uses a corrupted one:
  * a zip checkpoint (what torch.save writes) is read once, its entries' CRCs checked, and torch loads an
    archive rebuilt from the checked entries (ssdfast.machinery.zip_archive), so a file that PyTorch's
    zip reader reads otherwise than Python's is refused, not loaded. A file in torch's legacy pickle
    format (torch < 1.6) has no CRCs: it is unpickled as it is (a file that either reader takes for a zip
    is checked as one);
  * ssdfast's checkpoints carry the sha256 of their weights (DIGEST_KEY), recomputed at load: it catches
    what a CRC cannot (an entry rewritten with a fresh CRC, a reader tricked into other bytes);
  * the metadata is validated key by key against the weights (checkpoint_metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ssdfast.machinery.model_metadata import MODEL_RULES, found, is_int, problem
from ssdfast.machinery.outputs import OutputError, atomic_write
from ssdfast.machinery.zip_archive import ZIP_MAGIC, ArchiveError, read_archive
from ssdfast.models.registry import model_of_state

# The older implementation's unused seventh SSDLite head.
IGNORED_KEYS = ("loc.6.", "conf.6.")
# The key of the weights' sha256 in the checkpoints ssdfast writes (weights_digest of state["model"]).
DIGEST_KEY = "weights_sha256"


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


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict: each key, then each tensor's dtype, shape and bytes, in key order.

    Cost: one pass over the bytes, about 0.1 s for SSD300's 92 MB on one CPU core (a GPU tensor is
    copied to the host first, as torch.save copies it)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(f"{key}\0".encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{tensor.dtype}{tuple(value.shape)}\0".encode())
            digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically (ssdfast.machinery.outputs.atomic_output: temporary, fsync, rename),
    with the sha256 of its weights (state["model"]) under DIGEST_KEY.

    A run killed at any moment leaves either the old file or the new one, never a torn one. A full
    disk, an unwritable or vanished folder raises CheckpointError naming the folder and the space
    needed (the old file stays: until the rename both must fit), and leaves no temporary file behind.
    """
    if isinstance(state.get("model"), Mapping):
        state = {**state, DIGEST_KEY: weights_digest(state["model"])}
    needed = state_bytes(state) + 2**20  # + headroom for the pickled metadata and the zip directory
    try:
        atomic_write(path, lambda f: torch.save(state, f), "checkpoint", needed)
    except OutputError as error:
        raise CheckpointError(str(error)) from error


def existing_checkpoint(path: str | Path) -> Path:
    """`path` when it is a regular file; else CheckpointError naming it (checked before any other work)."""
    path = Path(path)
    if not path.is_file():
        found_there = "is not a regular file" if path.exists() else "not found"
        raise CheckpointError(f"checkpoint {found_there}: {path}")
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint dict safely (see the module docstring). Raises CheckpointError naming the file."""
    path = existing_checkpoint(path)
    if not _looks_like_a_checkpoint(path):  # decided from a few KB: a 2 GB file of anything else is not read
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint (neither a zip archive nor a pickle, by its "
            "first and last bytes)"
        )
    data = path.read_bytes()
    if data.startswith(ZIP_MAGIC) or zipfile.is_zipfile(io.BytesIO(data)):  # torch's test for its format, or Python's
        try:
            data = read_archive(path, data, "checkpoint").data
        except ArchiveError as error:
            raise CheckpointError(str(error)) from error
    try:
        # argparse.Namespace: NVIDIA's checkpoints may carry their args; it holds plain values.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {error.__class__.__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            " (truncated or corrupted file, or not a PyTorch checkpoint)"
        ) from error
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    if DIGEST_KEY in ckpt:
        _check_digest(path, ckpt)
    return ckpt


def _looks_like_a_checkpoint(path: Path) -> bool:
    """torch.save's zip format (its first bytes, or a zip end record: read_archive then judges it) or its
    legacy pickle (the PROTO opcode first), from bounded reads."""
    with open(path, "rb") as file:
        head = file.read(len(ZIP_MAGIC))
    return head.startswith(ZIP_MAGIC) or head[:1] == b"\x80" or zipfile.is_zipfile(path)


def _check_digest(path: Path, ckpt: dict) -> None:
    recorded, weights = ckpt[DIGEST_KEY], ckpt.get("model")
    if not isinstance(recorded, str) or not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its {DIGEST_KEY!r} must be a sha256 of its 'model' weights")
    if weights_digest(weights) != recorded:
        raise CheckpointError(
            f"{path} is corrupted: its weights do not match the sha256 recorded when it was saved "
            "(damaged on disk or in transfer, or edited)"
        )


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


def infer_num_classes(state: Mapping[str, torch.Tensor]) -> int:
    """C (without background) from the weights' first heads: see head_classes."""
    return head_classes({key: value.numel() for key, value in state.items() if isinstance(value, torch.Tensor)})


def head_classes(sizes: Mapping[str, int]) -> int:
    """C (without background) from {weight name: number of elements}: conf.0 has nd * (C + 1) outputs,
    loc.0 has nd * 4 (nd box shapes per location).

    The output layer is the last module with a bias inside the head (SSDLite heads are depthwise conv,
    BN, ReLU6, 1x1 conv), by module index. CheckpointError if the heads do not say."""

    def module_order(key: str) -> tuple:
        return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))

    def last_bias(prefix):
        biases = [k for k in sizes if k.startswith(prefix) and k.endswith("bias")]
        if not biases:
            raise CheckpointError(f"cannot infer the number of classes: no {prefix}* head in the weights")
        return sizes[max(biases, key=module_order)]

    loc, conf = last_bias("loc.0."), last_bias("conf.0.")
    boxes_per_location = loc // 4
    if boxes_per_location == 0 or loc % 4 or conf % boxes_per_location or conf // boxes_per_location < 2:
        raise CheckpointError(
            f"cannot infer the number of classes: the first heads' outputs ({loc} box, {conf} class) "
            "are not 4 and C + 1 per box shape"
        )
    return conf // boxes_per_location - 1


def infer_model_name(state: dict, path: str | Path = "<checkpoint>") -> str:
    """The registry name of the model `state` holds, from its parameter names (ssdfast/models/registry.py:
    each entry's signature): for files that do not store it (the older implementation's, NVIDIA's)."""
    try:
        return model_of_state(state)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from error


# The keys of a checkpoint's metadata beyond the model's own (MODEL_RULES).
CHECKPOINT_RULES = {
    **MODEL_RULES,
    "epoch": (lambda epoch, info: epoch is None or is_int(epoch, -1, 10**9), "null or an integer >= -1"),
    "best_ap": (
        lambda ap, info: (
            ap is None
            or (isinstance(ap, (int, float)) and not isinstance(ap, bool) and math.isfinite(ap) and -1 <= ap <= 1)
        ),
        "null or a number in [-1, 1]",
    ),
}


def checkpoint_metadata(path: str | Path, ckpt: dict, state: Mapping[str, torch.Tensor]) -> dict:
    """{"model_name", "num_classes", "category_names", "category_ids", "epoch"} of a checkpoint whose weights are
    `state` (model_state_dict), each key checked (CHECKPOINT_RULES) and num_classes equal to the class heads'.
    A key a file does not carry (the older implementation's and NVIDIA's carry none) is inferred from the weights
    (model_name, num_classes) or None (category_names, category_ids, epoch). CheckpointError naming the key."""
    try:
        classes = infer_num_classes(state)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    carried = {key: ckpt[key] for key in CHECKPOINT_RULES if ckpt.get(key) is not None}
    info = {
        "model_name": infer_model_name(state),
        "num_classes": classes,
        "category_names": None,
        "category_ids": None,
        "epoch": None,
        **carried,
    }
    rules = {key: rule for key, rule in CHECKPOINT_RULES.items() if key in carried}
    wrong = problem(info, rules)
    if wrong is None and info["num_classes"] != classes:
        wrong = "num_classes", f"the class count of its weights' class heads ({classes})"
    if wrong is not None:
        key, must = wrong
        raise CheckpointError(f"{path}: its metadata key {key!r} must be {must} (found: {found(ckpt, key)})")
    lists = {key: list(info[key]) for key in ("category_names", "category_ids") if info[key] is not None}
    return {
        **{key: info[key] for key in ("model_name", "num_classes", "epoch")},
        "category_names": None,
        "category_ids": None,
        **lists,
    }


def load_model_weights(model: nn.Module, state: dict, path: str | Path = "<checkpoint>") -> None:
    """Copy `state` into `model`, with an error naming the file and the mismatching keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(  # a value that is no tensor (a crafted file) counts as a wrong shape
        k for k in set(own) & set(state) if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape
    )
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
