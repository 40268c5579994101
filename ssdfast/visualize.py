"""Draw detections on an image (OpenCV)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(
    image_bgr: np.ndarray, boxes: np.ndarray, scores: np.ndarray | None, labels: np.ndarray, names: list[str]
) -> np.ndarray:
    """Return a copy of `image_bgr` with boxes [n, 4] (pixel xyxy), class names and scores drawn
    (scores None: names only, e.g. ground truth)."""
    out = image_bgr.copy()
    thickness = max(1, round(min(out.shape[:2]) / 300))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = class_color(int(label))
        name = names[int(label) - 1] if 0 < int(label) <= len(names) else str(int(label))
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, thickness)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(
            out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 0, 0), thickness, cv2.LINE_AA
        )
    return out
