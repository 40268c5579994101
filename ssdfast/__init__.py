"""ssdfast: SSD object detection.

    import ssdfast
    detector = ssdfast.load("trained_models/best.pt")
    detector.predict("street.jpg")[0].save("street_detections.jpg")

load, Detector and Result (ssdfast.detector) are imported on first use, so that `import ssdfast` (and
every tool's --help) does not wait for PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssdfast.detector import Detector, Result, load

__all__ = ["Detector", "Result", "load"]


def __getattr__(name: str):
    if name in __all__:
        from ssdfast import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'ssdfast' has no attribute {name!r}")
