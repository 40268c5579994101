"""Data: COCO-format reading and SSD augmentation (PyTorch path), DALI path, synthetic dataset."""
from .batch import Batch, Collate
from .coco import COCO_CLASSES, CocoDetection, read_image
from .loader import build_loader
from .synthetic import write_synthetic_coco

__all__ = ["Batch", "Collate", "COCO_CLASSES", "CocoDetection", "read_image", "build_loader", "write_synthetic_coco"]
