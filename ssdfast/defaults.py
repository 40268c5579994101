"""SSD's constants and the tools' choices, in a module without PyTorch: the tools' argument parsers read
their defaults from here, so `--help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSDDefaults:
    """SSD's constants in one place (docs/ssd.md sections 2-5), as NVIDIA's DefaultBoxes carries its
    scale_xy/scale_wh: every signature, the loss and the tools take their defaults from SSD_DEFAULTS."""

    center_variance: float = 0.1  # box coding: offsets of the centre are divided by this
    size_variance: float = 0.2  # ... and log-size ratios by this
    match_iou: float = 0.5  # a default box with IoU > this with its best ground truth is positive
    neg_pos_ratio: int = 3  # hard negative mining keeps at most this many negatives per positive
    score_threshold: float = 0.05  # post-processing: class scores at or below this are dropped
    nms_threshold: float = 0.45  # NMS suppresses IoU > this within a class (the older implementation trained with 0.5)
    topk_per_class: int = 200  # candidates per class before NMS
    max_detections: int = 200  # detections per image after NMS (K of the fixed-size output)


SSD_DEFAULTS = SSDDefaults()

DEFAULT_MAX_BOXES = 128  # ground-truth boxes per image after padding (G): static shapes for the step
DATA_BACKENDS = ("pytorch", "gpu", "dali")  # the data paths (docs/training.md: which to pick)
DATA_FORMATS = ("coco", "voc", "yolo")  # the dataset layouts read (ssdfast/data/formats.py; --data-format)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes (--compile-mode)
COMPILE_BACKENDS = ("inductor", "aot_eager")  # generated kernels, or the same graphs on eager kernels
MODEL_CHOICES = ("ssd", "ssdlite", "ssd300_resnet50", "ssdlite300_mobilenetv2")  # short names and full ones
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}  # files read as images from a folder
EXPORT_FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}  # tools/export.py --format -> the file suffix it writes
