"""A small synthetic dataset in the COCO layout: coloured shapes on textured backgrounds.

    DATA/annotations/instances_{train,val}2017.json, DATA/train2017/*.jpg, DATA/val2017/*.jpg

Three categories (circle, square, triangle) with deliberately non-contiguous ids (3, 7, 11) so the
label mapping is exercised; each class has its own hue family (with jitter), object sizes range
from small to large, 1-4 objects per image. Learnable by SSDLite in minutes on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = ({"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 11, "name": "triangle"})
CLASS_HUES = (0, 60, 120)  # OpenCV hue (0-180): red, green, blue families


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour gradient plus blurred noise: texture without shapes."""
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    slope = rng.uniform(-0.2, 0.2, size=(2, 3))
    image = base + gx[..., None] * slope[0] + gy[..., None] * slope[1]
    noise = cv2.resize(
        rng.normal(0, 25, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    image = image + noise + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _class_color(rng: np.random.Generator, cls: int) -> tuple[int, int, int]:
    hsv = np.uint8(
        [[[(CLASS_HUES[cls] + rng.integers(-12, 13)) % 180, rng.integers(170, 256), rng.integers(150, 256)]]]
    )
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _draw(image: np.ndarray, cls: int, x: int, y: int, size: int, color) -> list[float]:
    """Draw shape `cls` with top-left (x, y) and extent `size`; return its COCO bbox [x, y, w, h]."""
    if cls == 0:
        r = size // 2
        cv2.circle(image, (x + r, y + r), r, color, -1, lineType=cv2.LINE_AA)
    elif cls == 1:
        cv2.rectangle(image, (x, y), (x + size - 1, y + size - 1), color, -1)
    else:
        pts = np.array([[x + size // 2, y], [x, y + size - 1], [x + size - 1, y + size - 1]], dtype=np.int32)
        cv2.fillPoly(image, [pts], color, lineType=cv2.LINE_AA)
    return [float(x), float(y), float(size), float(size)]


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def write_split(root: Path, split: str, num_images: int, rng: np.random.Generator, first_id: int) -> None:
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for n in range(num_images):
        image_id = first_id + n
        height, width = int(rng.integers(200, 321)), int(rng.integers(240, 401))
        image = _background(rng, height, width)
        boxes = []
        for _ in range(int(rng.integers(1, 5))):
            size = int(rng.uniform(0.12, 0.6) * min(height, width))
            x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
            if any(_overlap((x, y, size, size), b) > 0.2 for b in boxes):
                continue
            cls = int(rng.integers(len(CATEGORIES)))
            bbox = _draw(image, cls, x, y, size, _class_color(rng, cls))
            boxes.append(bbox)
            annotations.append(
                {
                    "id": len(annotations) + 1 + first_id * 10,
                    "image_id": image_id,
                    "category_id": CATEGORIES[cls]["id"],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(image_dir / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    ann = {"images": images, "annotations": annotations, "categories": list(CATEGORIES)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(ann))


def write_synthetic_coco(root: str | Path, num_train: int = 256, num_val: int = 64, seed: int = 0) -> Path:
    """Write the dataset under `root` (created if needed) and return `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    write_split(root, "train", num_train, rng, first_id=1)
    write_split(root, "val", num_val, rng, first_id=100000)
    return root
