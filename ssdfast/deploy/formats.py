"""The export formats, one entry each: every list of formats and suffixes, and the choice of the code that
writes and runs a file, derive from FORMATS.

Without PyTorch (tools/export.py's --help lists the formats). Adding a format: a writer and an opener (their
contracts below) in a module of ssdfast.deploy, its pip extra in pyproject.toml, and one line in FORMATS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportFormat:
    name: str  # tools/export.py --format
    suffix: str  # the file it writes, and how ssdfast.load, eval and detect recognise one
    writer: str  # "module:function" (detector, example, dynamic, info, with_nms, path) -> None: writes the file
    opener: str  # "module:function" (path, device) -> (run, metadata text, {weight name: elements}): checks, opens
    for_onnx: bool  # post-processing written for ONNX: plain tensor ops, NMS as the standard NonMaxSuppression
    extra: str  # the pip extra its exporter and runtime come with (make install EXTRAS=...)


FORMATS: dict[str, ExportFormat] = {
    entry.name: entry
    for entry in (
        ExportFormat(
            "onnx", ".onnx", "ssdfast.deploy.export:write_onnx", "ssdfast.deploy.deployed:open_onnx", True, "export"
        ),
        ExportFormat(
            "torch-export",
            ".pt2",
            "ssdfast.deploy.export:write_pt2",
            "ssdfast.deploy.deployed:open_pt2",
            False,
            "export",
        ),
    )
}
BY_SUFFIX: dict[str, ExportFormat] = {entry.suffix: entry for entry in FORMATS.values()}


def format_of(path: str | Path) -> ExportFormat | None:
    """The format of the file `path`, by its suffix; None for anything else (a checkpoint)."""
    return BY_SUFFIX.get(Path(path).suffix.lower())


def function(reference: str) -> Callable:
    """The function a "module:function" entry names, imported on first use."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)
