"""The export formats, one entry each: every list of formats and suffixes, and the choice of the code that
writes and runs a file, derive from FORMATS.

Without PyTorch (tools/export.py's --help lists the formats). Adding a format: a writer and an opener (their
contracts below) in a module of ssdfast.deploy, its pip extra in pyproject.toml, and one line in FORMATS.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# tools/export.py --int8 (ssdfast.deploy.int8): calibration images (ONNX Runtime's and NNCF's examples use
# 100-300; MinMax ranges settle well before), validation images of the AP check, the AP points it may drop.
CALIBRATION_IMAGES, VALIDATION_IMAGES, MAX_AP_DROP = 128, 500, 1.0


@dataclass(frozen=True)
class ExportFormat:
    name: str  # tools/export.py --format
    suffix: str  # the file it writes, and how ssdfast.load, eval and detect recognise one
    # "module:function" (detector, example, dynamic, info, with_nms, path, calibration) -> None: writes the file
    # (and its companions beside it); calibration: None (float32) or normalised image batches (INT8)
    writer: str
    # "module:function" (path, device) -> (run, metadata text, class count of its class heads or None): checks
    # the file's integrity, then opens the bytes it checked; run(images [B, 3, 300, 300]) -> its outputs
    opener: str
    for_onnx: bool  # post-processing written for ONNX: plain tensor ops, NMS as the standard NonMaxSuppression
    extra: str  # the pip extra its exporter and runtime come with (make install EXTRAS=...)
    runtime: tuple[str, ...] = ()  # the Python modules that run a file (its extra installs them)
    exporter: tuple[str, ...] = ()  # the ones that writing a file needs besides
    int8: bool = False  # --int8 writes a quantized network (calibrated, held to the AP bound)
    companions: tuple[str, ...] = ()  # suffixes of files beside it with its stem, part of the file (OpenVINO's .bin)
    nms_inside: bool = True  # the file can hold NMS; else ssdfast.postprocess.select runs after it
    max_batch: int = 4096  # upper bound of a dynamic batch axis (torch.export needs one)

    def files(self, path: str | Path) -> list[Path]:
        """The files of the exported model `path`: itself, then its companions."""
        path = Path(path)
        return [path, *(path.with_suffix(suffix) for suffix in self.companions)]


FORMATS: dict[str, ExportFormat] = {
    entry.name: entry
    for entry in (
        ExportFormat(
            "onnx",
            ".onnx",
            "ssdfast.deploy.export:write_onnx",
            "ssdfast.deploy.deployed:open_onnx",
            True,
            "export",
            runtime=("onnx", "onnxruntime"),
            exporter=("onnxscript",),
            int8=True,
        ),
        ExportFormat(
            "torch-export",
            ".pt2",
            "ssdfast.deploy.export:write_pt2",
            "ssdfast.deploy.deployed:open_pt2",
            False,
            "export",
        ),
        ExportFormat(
            "openvino",
            ".xml",
            "ssdfast.deploy.openvino_file:write",
            "ssdfast.deploy.openvino_file:open_file",
            True,
            "openvino",
            runtime=("openvino",),
            exporter=("nncf", "onnx", "onnxscript"),
            int8=True,
            companions=(".bin",),
        ),
        # XNNPACK has no NMS; ExecuTorch plans memory for the largest batch a file allows, so a small bound
        ExportFormat(
            "executorch",
            ".pte",
            "ssdfast.deploy.executorch_file:write",
            "ssdfast.deploy.executorch_file:open_file",
            True,
            "executorch",
            runtime=("executorch",),
            exporter=("torchao",),
            int8=True,
            nms_inside=False,
            max_batch=16,
        ),
    )
}
BY_SUFFIX: dict[str, ExportFormat] = {entry.suffix: entry for entry in FORMATS.values()}


def format_of(path: str | Path) -> ExportFormat | None:
    """The format of the file `path`, by its suffix; None for anything else (a checkpoint)."""
    return BY_SUFFIX.get(Path(path).suffix.lower())


def missing(fmt: ExportFormat, what: str, exporting: bool = False) -> str | None:
    """None, or the one line saying that `what` (running a file of `fmt`, or exporting to it) needs modules
    that are not installed, and the extra that installs them."""
    needed = fmt.runtime + (fmt.exporter if exporting else ())
    absent = [name for name in needed if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return f"{what} needs {', '.join(absent)}: pip install -e .[{fmt.extra}] --no-build-isolation"


def function(reference: str) -> Callable:
    """The function a "module:function" entry names, imported on first use."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)
