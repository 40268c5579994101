"""Load a ``.pt2`` (torch.export archive) without letting the file run code or touch other files.

torch.export.load trusts its file: it unpickles the sample inputs with weights_only=True but falls
back to a full pickle when that fails (torch._export.serde.serialize.deserialize_torch_artifact),
full-unpickles weights and constants flagged ``use_pickle``, ``pickle.loads`` "opaque" constants,
and loads AOTInductor shared libraries. A crafted file can therefore run any code. ssdfast writes
far less than that format allows, so an archive is accepted only if it is exactly what
``ssdfast.deploy.export`` writes, checked on the entries that torch then loads: the archive is read
once and rebuilt from its checked entries (``ssdfast.machinery.zip_archive``: CRCs, one root folder,
no duplicate names, the same entries to torch's reader as to Python's), and torch gets the rebuilt copy:
  * entries: only the layout in ``_ENTRY`` (no AOTInductor libraries, no pickled or custom-object
    constants, no legacy files);
  * weights and constants stored as raw bytes (``use_pickle`` false), each naming an entry there is;
  * the one pickle left, the sample inputs, passes torch's weights_only unpickler here first;
  * every graph node calls an ``aten`` or ``ssdfast`` op or a symbolic-size operator, none of
    them one that opens a file by name (``aten::from_file`` could map any file and write to it);
  * torch.export.load then runs with TORCH_FORCE_WEIGHTS_ONLY_LOAD set, so no torch.load inside it
    can fall back to a full pickle, whatever torch's code does. A failure inside it is one
    CheckpointError carrying torch's reason (torch.export.load logs it as a warning with its traceback,
    then raises a message that says only "check the warnings above").
Cost: the archive is held in memory twice while it loads, and the checks read it once more.
"""

from __future__ import annotations

import io
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.machinery.user_errors import parse_json
from ssdfast.machinery.zip_archive import Archive, ArchiveError, read_archive

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
    try:
        archive = read_archive(path, path.read_bytes(), "the torch.export program")
    except ArchiveError as error:
        raise (UnsafePT2Error if error.unsafe else CheckpointError)(str(error)) from error
    _check_archive(path, archive)
    extra = {extra_file: ""}
    try:
        with _weights_only_everywhere(), _torch_export_reasons() as reasons:
            program = torch.export.load(io.BytesIO(archive.data), extra_files=extra)
    except Exception as error:
        reason = reasons[0] if reasons else error
        text = (str(reason).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot read the torch.export program {path}: {reason.__class__.__name__}: {text} "
            "(truncated or corrupted file?)"
        ) from error
    return program, extra[extra_file] or None


def _check_archive(path: Path, archive: Archive) -> None:
    entries = _entries(path, archive.names)
    for config in _PAYLOAD_CONFIGS:
        if config in entries:
            _check_raw_payloads(path, config, _json(path, archive, config), entries)
    if "data/sample_inputs/model.pt" in entries:
        _check_weights_only(path, "data/sample_inputs/model.pt", archive.read("data/sample_inputs/model.pt"))
    if "models/model.json" not in entries:
        raise CheckpointError(f"cannot read the torch.export program {path}: it holds no models/model.json")
    _check_graph_targets(path, _json(path, archive, "models/model.json"))


def _json(path: Path, archive: Archive, name: str):
    try:
        return parse_json(archive.read(name))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(
            f"cannot read the torch.export program {path}: {name} is not valid JSON ({str(error)[:120]})"
        ) from error


def _entries(path: Path, names: list[str]) -> set[str]:
    """The names inside the root folder; refuses what ssdfast's exporter never writes."""
    for name in names:
        if not _ENTRY.fullmatch(name):
            raise UnsafePT2Error(
                f"{path} is refused: it holds {name!r}, which ssdfast's exporter does not write "
                "and torch.export.load could unpickle or run as code"
            )
    return set(names)


def _check_raw_payloads(path: Path, config_name: str, config, entries: set[str]) -> None:
    """Every payload of `config` is stored raw (not pickled) in an entry of the folder the config is in."""
    folder = config_name.rsplit("/", 1)[0]
    try:
        payloads = {name: (meta.get("use_pickle", True), meta["path_name"]) for name, meta in config["config"].items()}
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"cannot read the torch.export program {path}: {config_name} is malformed") from error
    for name, (pickled, entry) in payloads.items():
        if pickled is not False:
            raise UnsafePT2Error(
                f"{path} is refused: {config_name} stores {name!r} as a pickle, which "
                "torch.export.load unpickles without restriction (ssdfast writes raw tensors)"
            )
        if not isinstance(entry, str) or f"{folder}/{entry}" not in entries:
            raise CheckpointError(
                f"cannot read the torch.export program {path}: {config_name} stores {name!r} in "
                f"{str(entry)[:60]!r}, which the archive does not hold"
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
def _torch_export_reasons():
    """While it lasts, torch.export's warnings are not printed; the exceptions they carry (why a load
    failed: torch.export.load logs it, then raises a message without it) are collected in the list given."""
    reasons: list[BaseException] = []

    class Collect(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[1] is not None:
                reasons.append(record.exc_info[1])
            return False  # not printed: the caller's error line says it

    logger, collect = logging.getLogger("torch.export"), Collect()
    logger.addFilter(collect)
    try:
        yield reasons
    finally:
        logger.removeFilter(collect)


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
