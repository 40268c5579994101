"""Data: COCO-format reading and SSD augmentation (PyTorch path), the GPU and DALI paths, VOC/YOLO readers,
the synthetic dataset. The names below are imported on first use: a tool's argument parser can import
ssdfast.data.image_files without loading PyTorch.
"""

from __future__ import annotations

import importlib

EXPORTS = {
    "Batch": "batch",
    "Collate": "batch",
    "COCO_CLASSES": "coco",
    "CocoDetection": "coco",
    "read_image": "coco",
    "build_loader": "loader",
    "write_synthetic_coco": "synthetic",
}
__all__ = list(EXPORTS)


def __getattr__(name: str):
    if name in EXPORTS:
        return getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ssdfast.data' has no attribute {name!r}")
