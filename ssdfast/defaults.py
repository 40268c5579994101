"""SSD's constants and the tools' choices, in a module without PyTorch: the tools' argument parsers read
their defaults from here, so `--help` answers at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ssdfast.deploy.formats import FORMATS
from ssdfast.models.registry import MODEL_CHOICES  # noqa: F401  (the tools' --model choices: from the model registry)


@dataclass(frozen=True)
class SSDDefaults:
    """SSD's constants in one place (docs/ssd.md sections 2-4), as NVIDIA's DefaultBoxes carries its
    scale_xy/scale_wh: the anchor specifications (their variances), the loss and the ops take their
    defaults from SSD_DEFAULTS. The post-processing's settings are a DetectionPolicy (below)."""

    center_variance: float = 0.1  # box coding: offsets of the centre are divided by this
    size_variance: float = 0.2  # ... and log-size ratios by this
    match_iou: float = 0.5  # a default box with IoU > this with its best ground truth is positive
    neg_pos_ratio: int = 3  # hard negative mining keeps at most this many negatives per positive


SSD_DEFAULTS = SSDDefaults()


def _number(value) -> bool:
    """A finite int or float, not a bool (True would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# What each setting of a DetectionPolicy must be: (test, the words an error uses). An exported file's
# metadata is checked against the same ranges (ssdfast.deploy.metadata).
POLICY_RANGES = {
    "score_threshold": (lambda v: _number(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
    "nms_threshold": (lambda v: _number(v) and 0.0 < v <= 1.0, "a number in (0, 1]"),
    "topk_per_class": (_count, "an integer >= 1"),
    "max_detections": (_count, "an integer >= 1"),
}

# The names a DetectionPolicy's settings have outside it, {name: field}: the tools' flags (argparse dests;
# no tool has a top-k flag) and an exported file's metadata keys (files have always said max_det).
POLICY_NAMES = {
    "score_threshold": "score_threshold",
    "nms_threshold": "nms_threshold",
    "max_det": "max_detections",
    "topk_per_class": "topk_per_class",
}


@dataclass(frozen=True)
class DetectionPolicy:
    """What the post-processing keeps of a network's outputs (docs/ssd.md section 5): every function that
    post-processes takes one, so a setting has one name and one default. Checked when made: a bad
    value is one ValueError naming the setting, not a silent AP of 0 (score 1) or an empty tensor (K 0)."""

    score_threshold: float = 0.05  # class scores at or below this are dropped (>= 0: ONNX's NMS needs it)
    nms_threshold: float = 0.45  # NMS suppresses IoU > this within a class (the paper's 0.45)
    topk_per_class: int = 200  # candidates per class before NMS
    max_detections: int = 200  # detections per image after NMS (K of the fixed-size output)

    def __post_init__(self):
        for name, (ok, must) in POLICY_RANGES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"DetectionPolicy: {name} must be {must}, got {value!r}")


DETECTION_POLICY = DetectionPolicy()  # evaluation's: weak detections still add AP
DISPLAY_POLICY = replace(DETECTION_POLICY, score_threshold=0.3)  # for showing detections to people

DEFAULT_MAX_BOXES = 128  # ground-truth boxes per image after padding (G): static shapes for the step
DATA_BACKENDS = ("pytorch", "gpu", "dali")  # the data paths (docs/training.md: which to pick)
DATA_FORMATS = ("coco", "voc", "yolo")  # the dataset layouts read (ssdfast/data/formats.py; --data-format)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes (--compile-mode)
COMPILE_BACKENDS = ("inductor", "aot_eager")  # generated kernels, or the same graphs on eager kernels
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}  # files read as images from a folder
EXPORT_FORMATS = {f.name: f.suffix for f in FORMATS.values()}  # --format -> the suffix it writes (deploy/formats.py)
