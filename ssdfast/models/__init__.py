"""Model factory: build_model(name, num_classes, backbone_weights)."""

from __future__ import annotations

from ssdfast.models.ssd_base import SSDBase
from ssdfast.models.ssd_resnet50 import SSD300ResNet50
from ssdfast.models.ssdlite_mobilenetv2 import SSDLite300MobileNetV2

MODELS = {"ssd300_resnet50": SSD300ResNet50, "ssdlite300_mobilenetv2": SSDLite300MobileNetV2}
ALIASES = {"ssd": "ssd300_resnet50", "ssdlite": "ssdlite300_mobilenetv2"}


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MODELS:
        choices = ", ".join(sorted([*MODELS, *ALIASES]))
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}")
    return name


def build_model(name: str, num_classes: int = 80, backbone_weights="none") -> SSDBase:
    """Build a detector by name ('ssd300_resnet50' / 'ssd', 'ssdlite300_mobilenetv2' / 'ssdlite').

    num_classes: C, the number of object categories (background excluded; COCO: 80).
    backbone_weights: 'none' (random init), 'imagenet' (download torchvision's), or a file path.
    """
    return MODELS[canonical_name(name)](num_classes=num_classes, backbone_weights=backbone_weights)


__all__ = ["build_model", "canonical_name", "SSDBase", "SSD300ResNet50", "SSDLite300MobileNetV2", "MODELS"]
