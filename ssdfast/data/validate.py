"""Check a COCO annotation file once, at load: what stops the run, what is dropped and counted.

Stops the run (ValueError naming the file, the record id and the field): the file is not a JSON object;
`images`, `annotations` or `categories` is missing or not a list; a category without an integer `id`
or a string `name`, or two categories with one id; an image without an integer `id`. Every id must fit
in 64 bits (ids become int64 tensors).
Dropped and counted (one warning listing each problem class with the first few ids), because dropping
them cannot change what the rest means:
  * images: no `file_name`, or `width`/`height` missing, not a number, not positive, not finite or over
    MAX_IMAGE_SIDE (their boxes could not be normalised; 1e30 overflows an integer tensor); and the
    annotations of such an image;
  * annotations: no `image_id` of a kept image, a `category_id` not in `categories`, a `bbox` that
    is not 4 numbers, or a non-finite coordinate, or no 64-bit integer `id`.
Completed and counted: an annotation without `area` gets its bbox area (COCOeval needs one).
Degenerate boxes (zero or negative size, outside the image) and crowd boxes are dropped later by
the dataset (parse_annotations), which counts them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ssdfast.machinery.user_errors import shown

SHOW_IDS = 5  # how many record ids a message lists
# The largest width or height an image may have: OpenCV decodes no side longer (CV_IO_MAX_IMAGE_WIDTH).
MAX_IMAGE_SIDE = 2**20


@dataclass
class ValidationReport:
    """Problem class -> ids of the records dropped (or, for `repaired`, completed) for it."""

    dropped: dict[str, list] = field(default_factory=dict)
    repaired: dict[str, list] = field(default_factory=dict)

    def drop(self, problem: str, record_id) -> None:
        self.dropped.setdefault(problem, []).append(record_id)

    def repair(self, problem: str, record_id) -> None:
        self.repaired.setdefault(problem, []).append(record_id)

    def message(self) -> str:
        """'dropped N <problem> (ids ...); ...; filled in N <problem> (ids ...)', or '' if all was well."""

        def show(kind, problems):
            return [
                f"{kind} {len(ids)} {problem} (ids {', '.join(map(shown, ids[:SHOW_IDS]))}"
                f"{', ...' if len(ids) > SHOW_IDS else ''})"
                for problem, ids in problems.items()
            ]

        return "; ".join(show("dropped", self.dropped) + show("filled in", self.repaired))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_id(v) -> bool:
    """An integer that fits in 64 bits: ids become int64 tensors in a batch (10**30 would overflow there)."""
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def validate_coco(data, path: str | Path) -> tuple[dict, ValidationReport]:
    """(the usable part of `data`, what was dropped). Raises ValueError for what cannot be dropped."""

    def fail(message: str):
        raise ValueError(f"{path}: {message}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object with images, annotations and categories, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            fail(f"no '{key}' list (a COCO annotation file has images, annotations and categories)")
        if not isinstance(data[key], list):
            fail(f"'{key}' must be a list, got {type(data[key]).__name__}")
    report = ValidationReport()

    categories, category_ids = [], set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            fail(
                f"category #{i}: 'id' must be a 64-bit integer, got {shown(cat.get('id') if isinstance(cat, dict) else cat)}"
            )
        if not isinstance(cat.get("name"), str):
            fail(f"category id {shown(cat['id'])}: 'name' must be a string, got {shown(cat.get('name'))}")
        if cat["id"] in category_ids:
            fail(f"category id {shown(cat['id'])} appears twice")
        category_ids.add(cat["id"])
        categories.append(cat)

    images, image_ids = [], set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            fail(
                f"image #{i}: 'id' must be a 64-bit integer, got {shown(img.get('id') if isinstance(img, dict) else img)}"
            )
        if img["id"] in image_ids:
            fail(f"image id {shown(img['id'])} appears twice")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            report.drop("images without a file_name", img["id"])
        elif not all(_is_number(img.get(k)) and img[k] > 0 for k in ("width", "height")):
            report.drop("images without a positive width and height", f"{img['id']} {shown(img['file_name'])}")
        elif not all(img[k] <= MAX_IMAGE_SIDE for k in ("width", "height")):  # also infinity
            report.drop(
                f"images wider or higher than {MAX_IMAGE_SIDE} pixels", f"{img['id']} {shown(img['file_name'])}"
            )
        else:
            images.append(img)
            image_ids.add(img["id"])

    annotations = []
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", f"#{i}") if isinstance(ann, dict) else f"#{i}"
        if not isinstance(ann, dict):
            report.drop("annotations that are not objects", ann_id)
        elif "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            report.drop("annotations whose iscrowd is not 0 or 1", ann_id)
        elif not _is_id(ann.get("id")):
            report.drop("annotations without a 64-bit integer id", ann_id)
        elif not _is_id(ann.get("image_id")) or ann["image_id"] not in image_ids:
            report.drop("annotations of an unknown or dropped image", ann_id)
        elif not _is_id(ann.get("category_id")) or ann["category_id"] not in category_ids:
            report.drop("annotations with a category_id not in categories", ann_id)
        elif (
            not isinstance(ann.get("bbox"), list)
            or len(ann["bbox"]) != 4
            or not all(_is_number(v) and math.isfinite(v) for v in ann["bbox"])
        ):
            report.drop("annotations whose bbox is not 4 finite numbers", ann_id)
        else:
            if not _is_number(ann.get("area")):  # COCOeval needs it: the box area stands in, as in COCO's own tools
                ann = {**ann, "area": float(ann["bbox"][2] * ann["bbox"][3])}
                report.repair("missing areas with the bbox area", ann_id)
            annotations.append(ann)
    clean = {**data, "images": images, "annotations": annotations, "categories": categories}
    return clean, report
