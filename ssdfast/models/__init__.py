"""Model factory: build_model(name, num_classes, backbone_weights), from the registry (ssdfast/models/registry.py).

Without PyTorch until a model is built: the tools' --help reads the registry and the pretrained names
through this package. SSDBase is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ssdfast.models.registry import ALIASES, MODELS, ModelEntry, canonical_name

if TYPE_CHECKING:
    from ssdfast.models.ssd_base import SSDBase


def model_class(name: str) -> type[SSDBase]:
    """The class of a model name or alias, imported from the registry's "module:Class"."""
    module, _, cls = MODELS[canonical_name(name)].model_class.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, num_classes: int = 80, backbone_weights="none") -> SSDBase:
    """Build a detector by name or alias (ssdfast/models/registry.py: 'ssd300_resnet50' / 'ssd',
    'ssdlite300_mobilenetv2' / 'ssdlite') with the registry's anchor spec.

    num_classes: C, the number of object categories (background excluded; COCO: 80).
    backbone_weights: 'none' (random init), 'imagenet' (this model's backbone's, downloaded once to the
    cache), a backbone name of ssdfast/models/pretrained.py, or a path to a torchvision state dict.
    """
    from ssdfast import anchors
    from ssdfast.models.pretrained import resolve_backbone

    entry = MODELS[canonical_name(name)]
    path = resolve_backbone(backbone_weights, entry)
    return model_class(entry.name)(getattr(anchors, entry.anchor_spec), num_classes=num_classes, backbone_weights=path)


def __getattr__(name: str):
    if name == "SSDBase":
        from ssdfast.models.ssd_base import SSDBase

        return SSDBase
    raise AttributeError(f"module 'ssdfast.models' has no attribute {name!r}")


__all__ = ["ALIASES", "MODELS", "ModelEntry", "SSDBase", "build_model", "canonical_name", "model_class"]
