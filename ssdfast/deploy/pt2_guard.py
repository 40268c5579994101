"""Load a ``.pt2`` (torch.export archive) without letting the file run code or touch other files.

torch.export.load trusts its file: it unpickles the sample inputs with weights_only=True but falls
back to a full pickle when that fails (torch._export.serde.serialize.deserialize_torch_artifact),
full-unpickles weights and constants flagged ``use_pickle``, ``pickle.loads`` "opaque" constants,
and loads AOTInductor shared libraries. A crafted file can therefore run any code. ssdfast writes
far less than that format allows, so an archive is accepted only if it is exactly what
``ssdfast.deploy.export`` writes, checked on the bytes that are then loaded (read once: no swap between
check and load):
  * entries: one root folder, no duplicate names, only the layout in ``_ENTRY`` (no AOTInductor
    libraries, no pickled or custom-object constants, no legacy files); every entry's CRC is checked;
  * weights and constants stored as raw bytes (``use_pickle`` false);
  * the one pickle left, the sample inputs, passes torch's weights_only unpickler here first;
  * every graph node calls an ``aten`` or ``ssdfast`` op or a symbolic-size operator, none of
    them one that opens a file by name (``aten::from_file`` could map any file and write to it);
  * torch.export.load then runs with TORCH_FORCE_WEIGHTS_ONLY_LOAD set, so no torch.load inside it
    can fall back to a full pickle, whatever torch's code does.
Cost: the archive is held in memory once more while it loads, and the checks read it once more.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from ssdfast.machinery.checkpoint import CheckpointError

_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/(model_weights_config\.json|weight_\d+)"
    r"|data/constants/(model_constants_config\.json|tensor_\d+)|extra/[A-Za-z0-9_.-]+)"
)
_PAYLOAD_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
_SYMBOLIC_TARGET = re.compile(r"(_operator|math)\.\w+|torch\.sym_\w+")
_OP_TARGET = re.compile(r"torch\.ops\.(aten|ssdfast)\.\w+\.\w+")


class UnsafePT2Error(CheckpointError):
    """A .pt2 that holds something ssdfast does not write and torch would unpickle or run."""


def load_pt2(path: Path, extra_file: str) -> tuple[torch.export.ExportedProgram, str | None]:
    """The program in `path` and the text of its extra file `extra_file` (None if absent), after the
    checks above. Raises UnsafePT2Error (refused) or CheckpointError (unreadable)."""
    data = path.read_bytes()
    _check_archive(path, data)
    extra = {extra_file: ""}
    try:
        with _weights_only_everywhere():
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as error:
        raise CheckpointError(
            f"cannot read the torch.export program {path}: {error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''} (truncated or corrupted file?)"
        ) from error
    return program, extra[extra_file] or None


def _check_archive(path: Path, data: bytes) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        broken = archive.testzip()  # reads every entry: CRCs, and local headers that agree with the directory
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"cannot read the torch.export program {path}: not a zip archive ({error}) (truncated or corrupted file?)"
        ) from error
    if broken is not None:
        raise CheckpointError(f"cannot read the torch.export program {path}: entry {broken} is corrupted")
    entries = _entries_under_one_root(path, archive.namelist())
    for config in _PAYLOAD_CONFIGS:
        _check_raw_payloads(path, config, archive.read(entries[config]) if config in entries else b'{"config": {}}')
    if "data/sample_inputs/model.pt" in entries:
        _check_weights_only(path, "data/sample_inputs/model.pt", archive.read(entries["data/sample_inputs/model.pt"]))
    if "models/model.json" not in entries:
        raise CheckpointError(f"cannot read the torch.export program {path}: it holds no models/model.json")
    _check_graph_targets(path, json.loads(archive.read(entries["models/model.json"])))


def _entries_under_one_root(path: Path, names: list[str]) -> dict[str, str]:
    """{name inside the root folder: full name}; refuses what ssdfast's exporter never writes."""
    if len(set(names)) != len(names):
        raise UnsafePT2Error(f"{path} is refused: its zip archive names an entry twice")
    root = names[0].split("/")[0] + "/" if names else ""
    entries = {}
    for name in names:
        inner = name[len(root) :] if name.startswith(root) else None
        if inner is None or not _ENTRY.fullmatch(inner):
            raise UnsafePT2Error(
                f"{path} is refused: it holds {name!r}, which ssdfast's exporter does not write "
                "and torch.export.load could unpickle or run as code"
            )
        entries[inner] = name
    return entries


def _check_raw_payloads(path: Path, config_name: str, config: bytes) -> None:
    try:
        pickled = [name for name, meta in json.loads(config)["config"].items() if meta.get("use_pickle", True)]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"cannot read the torch.export program {path}: {config_name} is malformed") from error
    if pickled:
        raise UnsafePT2Error(
            f"{path} is refused: {config_name} stores {pickled[0]!r} as a pickle, which "
            "torch.export.load unpickles without restriction (ssdfast writes raw tensors)"
        )


def _check_weights_only(path: Path, name: str, payload: bytes) -> None:
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as error:
        after = str(error).partition("WeightsUnpickler error:")[2].strip()  # torch's reason, if it gave one
        reason = after.splitlines()[0] if after else error.__class__.__name__
        raise UnsafePT2Error(
            f"{path} is refused: {name} is not a plain tensor pickle ({reason}); "
            "torch.export.load would unpickle it without restriction"
        ) from error


def _check_graph_targets(path: Path, program: object) -> None:
    """Every node of every graph (nested ones included) calls an allowed operator."""
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            target = item.get("target")
            if isinstance(target, str) and "inputs" in item and not _allowed_target(target):
                raise UnsafePT2Error(
                    f"{path} is refused: its graph calls {target}, which ssdfast's exporter "
                    "never writes (only aten and ssdfast ops that open no file)"
                )
            stack.extend(item.values())


def _allowed_target(target: str) -> bool:
    if _SYMBOLIC_TARGET.fullmatch(target):
        return True
    if not _OP_TARGET.fullmatch(target):
        return False
    _, _, namespace, name, overload = target.split(".")
    op = getattr(getattr(getattr(torch.ops, namespace), name, None), overload, None)
    return op is not None and not any(arg.name == "filename" for arg in op._schema.arguments)


@contextmanager
def _weights_only_everywhere():
    """torch.load reads TORCH_FORCE_WEIGHTS_ONLY_LOAD on every call: while set, weights_only=False
    passed by torch's own loaders is overridden. Process-wide while it lasts (loading is not threaded)."""
    saved = {
        key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ.update({key: value for key, value in saved.items() if value is not None})
