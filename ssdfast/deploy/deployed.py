"""Run an exported detector like a checkpoint: ``.onnx`` through ONNX Runtime, ``.pt2`` through
torch.export.load, the other formats of ``ssdfast.deploy.formats`` through their own runtimes. Normalised
images [B, 3, 300, 300] in, ssdfast ``Detections`` out, so tools/eval.py and tools/detect.py measure and
use exactly the file that is shipped (chosen by the weights' suffix). A .pt2 is loaded only if it cannot
run code (``ssdfast.deploy.pt2_guard``); every file's integrity is checked before it runs.

A file exported with NMS has its thresholds inside the graph: a higher score threshold can still be
applied afterwards (NMS visits boxes by decreasing score, so dropping weaker ones later changes
nothing above them), a lower one or another NMS threshold cannot (re-export). Without NMS, the
post-processing after the graph (``ssdfast.postprocess.select``) takes any thresholds. Top-k and K are
the file's own either way (a caller who wants fewer detections cuts the sorted rows).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ssdfast.defaults import DetectionPolicy
from ssdfast.deploy.formats import BY_SUFFIX, format_of, function, missing
from ssdfast.deploy.metadata import ONNX_METADATA, PT2_METADATA, exported_policy, validate
from ssdfast.deploy.onnx_digest import verified_model
from ssdfast.deploy.pt2_guard import load_pt2
from ssdfast.machinery.checkpoint import CheckpointError, head_classes
from ssdfast.postprocess import Detections, select

SUFFIXES = tuple(BY_SUFFIX)  # the exported files ssdfast runs (ssdfast/deploy/formats.py)


def is_deployed(path: str | Path) -> bool:
    """Whether `path` names an exported detector (by suffix) rather than a checkpoint."""
    return format_of(path) is not None


def open_onnx(path: Path, device: torch.device):
    """An .onnx file's (run, metadata text, class count of its weights): checked (onnx_digest), then one ONNX
    Runtime session on the checked bytes; run(images) -> the file's outputs on `device`. An INT8 file's
    quantized initializers are read under their float names (NAME_quantized: NAME)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CheckpointError(
                f"{path}: this onnxruntime has no CUDA execution provider (install "
                "onnxruntime-gpu, or run with --device cpu)"
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    data = path.read_bytes()  # read once: the bytes checked are the bytes run
    model = verified_model(path, data)
    text = next((prop.value for prop in model.metadata_props if prop.key == ONNX_METADATA), None)
    sizes = {init.name.removesuffix("_quantized"): math.prod(init.dims) for init in model.graph.initializer}
    del model
    try:
        session = ort.InferenceSession(data, providers=providers)
    except Exception as error:
        raise CheckpointError(
            f"cannot read the ONNX model {path}: {str(error).splitlines()[0]} (truncated or corrupted file?)"
        ) from error

    def run(images: Tensor) -> list[Tensor]:
        feed = {"images": images.detach().float().cpu().contiguous().numpy()}
        return [torch.from_numpy(out).to(device) for out in session.run(None, feed)]

    return run, text, weights_classes(sizes)


def companion_bytes(path: Path, suffix: str) -> bytes:
    """The bytes of the file that belongs to the exported model `path` (OpenVINO's .bin): the regular file
    beside it with its stem and `suffix`, never a link (a file handed to ssdfast reads nothing outside its
    folder). CheckpointError naming it otherwise."""
    companion = path.with_suffix(suffix)
    must = f"{path} needs {companion.name} beside it, a regular file (not a link)"
    try:
        fd = os.open(companion, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise CheckpointError(f"{must}: {error.strerror or error}") from error
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{must}: it is not a regular file")
        return f.read()


def open_pt2(path: Path, device: torch.device):
    """A .pt2 file's (run, metadata text, class count of its weights): loaded through pt2_guard (nothing in it runs
    code); run(images) -> the program's outputs on `device`."""
    from ssdfast import ops  # registers torch.ops.ssdfast.*, which the program calls

    if ops.LOAD_ERROR is not None:
        raise CheckpointError(
            f"{path} calls the compiled ssdfast ops: it needs the extension ssdfast._C ({ops.LOAD_ERROR})"
        )
    program, text = load_pt2(path, PT2_METADATA)  # refuses a file that could run code (pt2_guard)
    sizes = {name: tensor.numel() for name, tensor in program.state_dict.items()}
    if device.type != "cpu":
        program = torch.export.passes.move_to_device_pass(program, device)
    module = program.module()

    def run(images: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return list(module(images.float().to(device)))

    return run, text, weights_classes(sizes)


def weights_classes(sizes: dict[str, int]) -> int | None:
    """The class count of an exported detector's class heads, from {weight name: number of elements}
    (the export names them model.<name in the PyTorch model>); None where the names do not say."""
    try:
        return head_classes({name.removeprefix("model."): n for name, n in sizes.items()})
    except CheckpointError:
        return None


class Deployed:
    """An exported detector. deployed(images [B, 3, 300, 300] normalised) -> Detections (on `device`).

    meta: what the export stored (model_name, num_classes, category_names, category_ids, with_nms,
    score_threshold, nms_threshold, max_det, ...); exported: its post-processing as a DetectionPolicy.
    policy: the thresholds the caller wants: a DetectionPolicy, a mapping of changes to the file's own
    ({"score_threshold": 0.3}), or None (the file's own); checked against a file with NMS inside
    (ValueError if impossible). self.policy: what is applied (thresholds the caller's, top-k and K the file's)."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        policy: DetectionPolicy | Mapping[str, float] | None = None,
    ):
        self.path, self.device = Path(path), torch.device(device)
        if not self.path.is_file():
            found_there = "is not a regular file" if self.path.exists() else "not found"
            raise CheckpointError(f"exported model {found_there}: {self.path}")
        self.format = format_of(self.path)
        if self.format is None:
            raise CheckpointError(f"{self.path}: not an exported model (one of {', '.join(SUFFIXES)})")
        absent = missing(self.format, f"{self.path} is a {self.format.name} model: running it")
        if absent:
            raise CheckpointError(absent)
        self._run, text, classes = function(self.format.opener)(self.path, self.device)
        self.meta = validate(self.path, text, classes)
        self.exported = exported_policy(self.meta)
        self.policy = self._applicable(policy)

    def _applicable(self, policy: DetectionPolicy | Mapping[str, float] | None) -> DetectionPolicy:
        """The policy this file runs with, given the caller's (see the class docstring)."""
        own = self.exported
        wanted = policy if isinstance(policy, DetectionPolicy) else replace(own, **(policy or {}))
        if self.meta["with_nms"] and wanted.nms_threshold != own.nms_threshold:
            raise ValueError(
                f"{self.path} was exported with NMS IoU threshold {own.nms_threshold} inside: "
                f"export it again with --nms-threshold {wanted.nms_threshold} (or --no-nms)"
            )
        if self.meta["with_nms"] and wanted.score_threshold < own.score_threshold:
            raise ValueError(
                f"{self.path} was exported with score threshold {own.score_threshold}: it "
                f"cannot give detections down to {wanted.score_threshold}; export it again with "
                f"--score-threshold {wanted.score_threshold} (or --no-nms)"
            )
        return replace(wanted, topk_per_class=own.topk_per_class, max_detections=own.max_detections)

    def raw(self, images: Tensor) -> list[Tensor]:
        """The file's outputs as they are (see ssdfast.deploy.export), on self.device."""
        return self._run(images)

    def __call__(self, images: Tensor) -> Detections:
        outputs = self.raw(images)
        if not self.meta["with_nms"]:
            return select(*outputs, self.policy)
        dets = Detections(*outputs)
        if self.policy.score_threshold == self.exported.score_threshold:
            return dets
        real = dets.scores > self.policy.score_threshold  # rows are sorted by decreasing score
        return Detections(dets.boxes * real[..., None], dets.scores * real, dets.labels * real, real.sum(dim=1))
