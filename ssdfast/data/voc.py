"""Pascal VOC (VOCdevkit layout) read into the COCO format: a DataSource that goes through the same checks.

    ROOT/Annotations/<id>.xml, ROOT/JPEGImages/<id>.jpg, ROOT/ImageSets/Main/{train,val,...}.txt

Decisions (one home for each):
  * categories: the 20 VOC classes (VOC_CLASSES, ids 1..20 in VOC's order) when every class name in
    Annotations/ is one of them, so a subset of VOC keeps VOC's labels; otherwise the sorted set of
    the names found in every XML of Annotations/ (not only the split's: train and val must agree).
  * boxes: VOC's xmin..xmax are 1-based inclusive pixel indices, so the COCO box is
    [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1] (Detectron2's and the devkit's IoU agree).
  * difficult objects: kept as COCO `iscrowd: 1`: not trained on (the dataset drops crowd boxes,
    counted), and ignored by both evaluators as VOC's protocol ignores them (ssdfast.evaluation.voc_eval).
  * width/height from <size>, or from the image header when <size> is missing or zero.
  * a file that is not parseable XML, or not a VOC <annotation>, is dropped and counted by name; an
    <object> without a name or without 4 numeric box coordinates is dropped and counted.
  * files: an XML must lie inside Annotations/, the split list inside ImageSets/Main/, an image read for
    its size inside JPEGImages/, symlinks followed, and each must be a regular file
    (ssdfast.data.dataset_files; --allow-outside-paths lifts the first). An XML that breaks it is
    dropped and counted by name, never read; a list file that does stops with one line.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from ssdfast.data.coco import DataSource
from ssdfast.data.dataset_files import (
    MAX_RECORD_BYTES,
    UnusableFile,
    contained,
    open_regular,
    read_dataset_bytes,
    read_dataset_text,
)
from ssdfast.data.validate import ValidationReport
from ssdfast.machinery.user_errors import shown

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def is_voc_root(path: Path) -> bool:
    return (path / "Annotations").is_dir() and (path / "ImageSets" / "Main").is_dir()


def _number(element, tag: str) -> float | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_voc_xml(path: Path, allow_outside: bool = False) -> dict:
    """{"filename", "width", "height", "objects": [{"name", "box": (xmin, ymin, xmax, ymax) | None,
    "difficult"}]}; a ValueError naming the file when it cannot be used (ssdfast.data.dataset_files),
    is not XML or is not a VOC annotation."""
    try:
        # The standard parser: no external entities, no DTD fetches; expat (>= 2.4) stops entity expansion
        # bombs ("billion laughs") itself.
        root = ET.fromstring(read_dataset_bytes(path.parent, path.name, allow_outside, MAX_RECORD_BYTES))
    except UnusableFile as error:
        raise ValueError(f"{shown(path.name)}: {error.problem}") from None
    except (ET.ParseError, OSError) as error:
        raise ValueError(f"{shown(path.name)}: {error}") from error
    if root.tag != "annotation":
        raise ValueError(f"{shown(path.name)}: root element <{shown(root.tag)}>, expected <annotation>")
    size = root.find("size")
    objects = [
        {
            "name": (obj.findtext("name") or "").strip(),
            "box": tuple(_number(obj.find("bndbox"), t) for t in BOX_FIELDS),
            "difficult": _number(obj, "difficult") == 1,
        }
        for obj in root.iter("object")
    ]
    return {
        "filename": (root.findtext("filename") or "").strip(),
        "width": _number(size, "width"),
        "height": _number(size, "height"),
        "objects": objects,
    }


def _all_annotations(annotations_dir: Path, allow_outside: bool = False) -> dict[str, dict | str]:
    """id -> parsed XML, or the error text. Every XML, not only the split's, because the categories
    come from all of them: a parse of each, once per split (seconds for VOC2012: docs/speed.md)."""
    parsed = {}
    for path in sorted(annotations_dir.glob("*.xml")):
        try:
            parsed[path.stem] = parse_voc_xml(path, allow_outside)
        except ValueError as error:
            parsed[path.stem] = str(error)
    return parsed


def voc_categories(parsed: dict[str, dict | str]) -> list[dict]:
    """COCO categories: VOC's 20 when all names found are VOC's, else the sorted names found."""
    names = {o["name"] for p in parsed.values() if isinstance(p, dict) for o in p["objects"] if o["name"]}
    ordered = VOC_CLASSES if names <= set(VOC_CLASSES) else sorted(names)
    return [{"id": i + 1, "name": name} for i, name in enumerate(ordered)]


def _image_size(image_dir: Path, name: str, allow_outside: bool) -> tuple[float, float]:
    """(width, height) from the image header (no decode); (0, 0) when it cannot be used (the check drops it)."""
    try:
        with open_regular(contained(image_dir, name, allow_outside), None) as file, Image.open(file) as image:
            return image.size
    except Exception:  # missing, outside, not a regular file, or whatever a hostile header trips in Pillow
        return 0, 0


def _image_record(image_id: int, stem: str, xml: dict, image_dir: Path, allow_outside: bool = False) -> dict:
    # A bare file name from <filename>; anything with a folder part is not trusted: the id's .jpg instead.
    name = xml["filename"] if xml["filename"] and Path(xml["filename"]).name == xml["filename"] else f"{stem}.jpg"
    width, height = xml["width"], xml["height"]
    if not all(v is not None and math.isfinite(v) and v > 0 for v in (width, height)):
        width, height = _image_size(image_dir, name, allow_outside)
    # Pixel counts (DALI's COCO reader wants integers); a finite size too large for any image stays
    # as it is, for the check to drop with the file named (int(1e30) is exact, no overflow here).
    width, height = int(width), int(height)
    return {"id": image_id, "file_name": name, "width": width, "height": height, "voc_id": stem}


def _annotation(ann_id: int, image_id: int, obj: dict, category_id: int) -> dict:
    x1, y1, x2, y2 = obj["box"]
    w, h = x2 - x1 + 1, y2 - y1 + 1  # 1-based inclusive pixel indices -> continuous width
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1 - 1, y1 - 1, w, h],
        "area": max(w, 0) * max(h, 0),
        "iscrowd": int(obj["difficult"]),
    }


def split_ids(root: Path, split: str, allow_outside: bool = False) -> list[str]:
    """The image ids of ImageSets/Main/{split}.txt (first word per line; the class files' flags ignored)."""
    folder = root / "ImageSets" / "Main"
    try:
        text = read_dataset_text(folder, f"{split}.txt", allow_outside)
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC split list not found: {folder / f'{split}.txt'}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def read_voc(root: str | Path, split: str, allow_outside: bool = False) -> DataSource:
    """The split `split` of a VOCdevkit-style folder (e.g. VOCdevkit/VOC2007) as a DataSource.
    allow_outside: also read files that resolve outside their folder (ssdfast.data.dataset_files)."""
    root = Path(root)
    image_dir, listing = root / "JPEGImages", root / "ImageSets" / "Main" / f"{split}.txt"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"VOC image folder not found: {image_dir}")
    stems = split_ids(root, split, allow_outside)
    parsed = _all_annotations(root / "Annotations", allow_outside)
    categories = voc_categories(parsed)
    category_of = {c["name"]: c["id"] for c in categories}
    found, images, annotations = ValidationReport(), [], []
    for image_id, stem in enumerate(stems, start=1):
        xml = parsed.get(stem)
        if xml is None:
            found.drop("listed images without an XML file in Annotations/", stem)
            continue
        if isinstance(xml, str):
            found.drop("VOC annotation files that cannot be read", xml)
            continue
        images.append(_image_record(image_id, stem, xml, image_dir, allow_outside))
        for obj in xml["objects"]:
            if not obj["name"] or None in obj["box"]:
                found.drop("VOC objects without a name or 4 numeric bndbox coordinates", stem)
                continue
            annotations.append(_annotation(len(annotations) + 1, image_id, obj, category_of[obj["name"]]))
    data = {"images": images, "annotations": annotations, "categories": categories}
    return DataSource(data, image_dir, listing, "voc", found)
