"""YOLO (Ultralytics layout) read into the COCO format: a DataSource that goes through the same checks.

    DATA/data.yaml             names: [a, b] or {0: a, 1: b};  train: images/train;  val: images/val
    DATA/images/train/x.jpg    DATA/labels/train/x.txt: one "class cx cy w h" line per box, in [0, 1]

Decisions (one home for each):
  * data.yaml is read with PyYAML's safe loader (no tag can run code), refusing aliases (`*name`): a
    510-byte chain of aliases expands to gigabytes. `train:`/`val:` is a folder (its images,
    recursively), a .txt list of image paths (relative to the list's folder), or a list of those.
  * The dataset is data.yaml's folder: `path:` is not used, and whatever data.yaml or a list names
    (folders, list files, images, label files) must lie inside that folder, symlinks followed, and be
    a regular file (ssdfast.data.dataset_files; --allow-outside-paths lifts the first). Roboflow's
    "../train/images" is read as "train/images", as Ultralytics does.
  * Label file: the image path with its last "images" folder replaced by "labels" and the suffix by
    .txt (Ultralytics' rule; beside the image when there is no "images" folder). None: no boxes.
  * Categories: id = class index + 1, named by `names`.
  * Image size from the header (PIL, no decode; one small read per image at load, as YOLO labels are
    relative), EXIF rotation applied as OpenCV's decoder applies it.
  * Dropped and counted by file and line: lines that are not 5 numbers with an integer class, class
    ids not in `names`, label files that cannot be used (outside the folder, not a regular file, not
    UTF-8), listed images outside the folder. Boxes partly or wholly outside the image are clipped or
    dropped (and counted) by the dataset, as for COCO.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from PIL import Image

from ssdfast.data.coco import DataSource
from ssdfast.data.dataset_files import (
    MAX_RECORD_BYTES,
    MAX_TEXT_BYTES,
    UnusableFile,
    contained,
    open_regular,
    read_bounded,
    read_dataset_text,
)
from ssdfast.data.jpeg_header import ORIENTATION_TAG, TRANSPOSED
from ssdfast.data.validate import ValidationReport
from ssdfast.defaults import IMAGE_SUFFIXES
from ssdfast.machinery.user_errors import shown


def find_data_yaml(path: Path) -> Path | None:
    """`path` itself when it is a .yaml/.yml file, else its data.yaml; None when there is none."""
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    return next((path / n for n in ("data.yaml", "data.yml") if (path / n).is_file()), None)


class LoaderWithoutAliases(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses an anchor (`&name`) or an alias (`*name`) where it meets one,
    before anything is expanded: what an alias saves in a data.yaml is a few lines."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors and aliases (&name, *name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def read_data_yaml(path: Path) -> dict:
    """data.yaml as a dict (a regular file of at most MAX_TEXT_BYTES, UTF-8, without aliases)."""
    with open_regular(path, MAX_TEXT_BYTES) as file:
        raw = read_bounded(file, path, MAX_TEXT_BYTES)
    try:
        config = yaml.load(raw.decode("utf-8-sig"), Loader=LoaderWithoutAliases)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"cannot parse {path}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    except yaml.YAMLError as error:
        raise ValueError(f"cannot parse {path}: {shown(' '.join(str(error).split()))}") from None
    except RecursionError:  # "[[[[..." nested deeper than Python's stack
        raise ValueError(f"cannot parse {path}: nested too deeply") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping with names, train and val, got {type(config).__name__}")
    return config


def class_names(config: dict, path: Path) -> dict[int, str]:
    """class index -> name from `names` (a list, or a dict of integer keys)."""
    names = config.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{path}: 'names' must be a non-empty list or a dict of class index -> name")
    for index, name in names.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0 or not isinstance(name, str):
            raise ValueError(f"{path}: names entry {shown(index)}: {shown(name)} is not a class index >= 0 and a name")
    return names


def inside(root: Path, entry: str | Path) -> Path | None:
    """root / entry made lexical (symlinks the user made are fine), or None when it leaves root."""
    path = Path(os.path.normpath(root / entry))
    return path if path.is_relative_to(os.path.normpath(root)) else None


def split_entry(root: Path, entry: str, path: Path, allow_outside: bool = False) -> Path:
    """The folder or list file `entry` of data.yaml names, checked to exist inside root (lexically, and
    with symlinks followed unless allow_outside: ssdfast.data.dataset_files)."""
    found = inside(root, entry)
    fallback = inside(root, entry[3:]) if entry.startswith("../") else None  # Roboflow's exports
    if (found is None or not os.path.exists(found)) and fallback is not None and os.path.exists(fallback):
        found = fallback
    if found is None:
        raise ValueError(f"{path}: {shown(entry)} lies outside {root} (move data.yaml into the dataset folder)")
    if not os.path.exists(found):  # also a name longer than the file system holds: not found either
        raise FileNotFoundError(f"{path}: {shown(entry)} not found (looked for {shown(str(found))})")
    return contained(root, found.relative_to(root), allow_outside)


def split_images(root: Path, entry: Path, found: ValidationReport, allow_outside: bool = False) -> list[Path]:
    """The images of one folder (recursive) or list file, sorted, all inside root (lexically: where
    they resolve to is checked as each is read)."""
    if entry.is_dir():
        # Not only regular files: a FIFO or a link out named *.jpg is dropped by name when it is read.
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    images = []
    for line in read_dataset_text(root, entry.relative_to(root), allow_outside).splitlines():
        image = inside(entry.parent, line.strip()) if line.strip() else None
        if image is None or inside(root, image) is None:
            if line.strip():
                found.drop("listed images outside the dataset folder", line.strip())
            continue
        images.append(image)
    return images


def label_file(root: Path, image: Path) -> Path:
    """The label file of `image`: its last "images" folder below root becomes "labels", suffix .txt."""
    parts = list(image.relative_to(root).parts)
    if "images" in parts[:-1]:
        parts[len(parts) - 2 - parts[-2::-1].index("images")] = "labels"
    return root.joinpath(*parts).with_suffix(".txt")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as decoded (EXIF rotation applied), from the header only; (0, 0) if missing or
    not an image; UnusableFile when it is not a regular file (ssdfast.data.dataset_files)."""
    try:
        with open_regular(path, None) as file, Image.open(file) as image:
            width, height = image.size
            rotated = image.getexif().get(ORIENTATION_TAG) in TRANSPOSED
    except UnusableFile:
        raise
    except Exception:  # missing, or whatever a hostile header trips in Pillow: the check drops size 0
        return 0, 0
    return (height, width) if rotated else (width, height)


def label_lines(root: Path, labels: Path, allow_outside: bool = False) -> list[str]:
    """The lines of a label file ([] when there is none); UnusableFile when it cannot be used."""
    try:
        return read_dataset_text(root, labels.relative_to(root), allow_outside, MAX_RECORD_BYTES).splitlines()
    except FileNotFoundError:
        return []


def parse_label_line(line: str) -> tuple[int, list[float]] | None:
    """(class index, [cx, cy, w, h]) of a "class cx cy w h" line, or None when it is not one."""
    fields = line.split()
    try:
        numbers = [float(f) for f in fields]
    except ValueError:
        return None
    if len(numbers) != 5 or not numbers[0].is_integer():
        return None
    return int(numbers[0]), numbers[1:]


def image_annotations(
    lines: list[str],
    name: str,
    image_id: int,
    size: tuple[int, int],
    names: dict[int, str],
    found: ValidationReport,
    first_id: int,
) -> list[dict]:
    """COCO annotations of one image's label lines."""
    width, height = size
    annotations = []
    for number, line in enumerate(lines, start=1):
        parsed = parse_label_line(line) if line.strip() else None
        if parsed is None or parsed[0] not in names:
            if line.strip():
                found.drop(
                    "YOLO label lines that are not 'class cx cy w h'"
                    if parsed is None
                    else "YOLO boxes of a class not in names",
                    f"{name}:{number}",
                )
            continue
        cls, (cx, cy, w, h) = parsed
        bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        annotations.append(
            {
                "id": first_id + len(annotations),
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": bbox,
                "area": max(bbox[2], 0) * max(bbox[3], 0),
                "iscrowd": 0,
            }
        )
    return annotations


def read_yolo(path: str | Path, split: str, allow_outside: bool = False) -> DataSource:
    """The split `split` ("train", "val", ...) of the dataset described by data.yaml (or the folder with it).
    allow_outside: also read files that resolve outside the dataset folder (ssdfast.data.dataset_files)."""
    yaml_file = find_data_yaml(Path(path))
    if yaml_file is None:
        raise FileNotFoundError(f"no data.yaml in {path}")
    config, root = read_data_yaml(yaml_file), Path(os.path.normpath(yaml_file.parent))
    names = class_names(config, yaml_file)
    entries = config.get(split)
    if not entries:
        raise ValueError(f"{yaml_file}: no '{split}:' entry (a folder or list of images)")
    found, images, annotations = ValidationReport(), [], []
    for entry in entries if isinstance(entries, list) else [entries]:
        folder_or_list = split_entry(root, str(entry), yaml_file, allow_outside)
        for image in split_images(root, folder_or_list, found, allow_outside):
            name, labels = image.relative_to(root).as_posix(), label_file(root, image)
            try:  # an image whose label file cannot be used is left out: its ground truth is unknown
                size = image_size(contained(root, name, allow_outside))
                lines = label_lines(root, labels, allow_outside)
            except UnusableFile as error:
                what = "label files" if error.path == labels else "images"
                found.drop(f"YOLO {what} {error.problem}", error.path.relative_to(root).as_posix())
                continue
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
            annotations += image_annotations(lines, name, image_id, size, names, found, len(annotations) + 1)
    categories = [{"id": index + 1, "name": name} for index, name in sorted(names.items())]
    data = {"images": images, "annotations": annotations, "categories": categories}
    return DataSource(data, root, yaml_file, "yolo", found)
