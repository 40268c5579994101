"""The models ssdfast builds, one entry each: every list and choice of models derives from MODELS.

Without PyTorch (the tools' --help reads MODEL_CHOICES). An entry names, as text, what the model is made
of; build_model (ssdfast/models/__init__.py) imports the class and hands it the anchor spec. Adding a
model: its file in ssdfast/models/ (a subclass of SSDBase taking (anchor_spec, num_classes,
backbone_weights)), an AnchorSpec in ssdfast/anchors.py if its anchors are new, and one line below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what checkpoints and exported files store as model_name
    aliases: tuple[str, ...]  # shorter names the tools and build_model take too
    summary: str  # one phrase for --help
    model_class: str  # "module:Class", imported on first build
    anchor_spec: str  # the name of its AnchorSpec in ssdfast.anchors
    imagenet: str  # its backbone's ImageNet weights: a name in ssdfast.models.pretrained (--backbone-weights imagenet)
    signature: str  # a parameter only this model has: recognises a checkpoint that does not say its model_name


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            "ssd300_resnet50",
            ("ssd",),
            "SSD300-ResNet50",
            "ssdfast.models.ssd_resnet50:SSD300ResNet50",
            "SSD300_RESNET50",
            "resnet50-imagenet",
            "additional_blocks.0.0.weight",
        ),
        ModelEntry(
            "ssdlite300_mobilenetv2",
            ("ssdlite",),
            "SSDLite-MobileNetV2",
            "ssdfast.models.ssdlite_mobilenetv2:SSDLite300MobileNetV2",
            "SSDLITE300",
            "mobilenet_v2-imagenet",
            "additional_blocks.0.conv.0.0.weight",
        ),
    )
}
ALIASES: dict[str, str] = {alias: entry.name for entry in MODELS.values() for alias in entry.aliases}
MODEL_CHOICES: tuple[str, ...] = (*ALIASES, *MODELS)  # the tools' --model choices: short names, then full ones
MODEL_HELP = " or ".join(f"{entry.aliases[0]} ({entry.summary})" for entry in MODELS.values())  # --model's help


def canonical_name(name: str) -> str:
    """The registry name of a model name or alias; ValueError listing the choices otherwise."""
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_CHOICES))}")
    return name


def model_of_state(state) -> str:
    """The registry name of the model whose parameters `state` (a state dict's keys) holds, by each entry's
    signature; ValueError when none matches (the older implementation's and NVIDIA's files store no name)."""
    for entry in MODELS.values():
        if entry.signature in state:
            return entry.name
    raise ValueError(
        "the weights are of no model ssdfast builds (none of "
        + ", ".join(f"{e.signature} ({e.name})" for e in MODELS.values())
        + " is among their keys)"
    )
