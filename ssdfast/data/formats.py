"""What the user gave -> one DataSource per split: the COCO layout, explicit COCO paths, Pascal VOC or YOLO.

    --data-path DATA [--data-format coco|voc|yolo]     the format is detected when not given
    --train-ann FILE --train-images DIR (and --val-...)  a COCO annotation file and its images, anywhere

Detection looks, in this order, for the COCO layout (DATA/annotations/), a VOCdevkit year folder
(DATA/Annotations/ and DATA/ImageSets/Main/, or one such folder inside DATA, as VOCdevkit/VOC2007)
and a YOLO data.yaml (DATA itself or DATA/data.yaml).
"""

from __future__ import annotations

from pathlib import Path

from ssdfast.data.coco import DataSource, coco_paths, coco_source
from ssdfast.data.voc import is_voc_root, read_voc
from ssdfast.data.yolo import find_data_yaml, read_yolo
from ssdfast.defaults import DATA_FORMATS

LOOKED_FOR = (
    "the COCO layout (annotations/instances_{train,val}2017.json)",
    "a VOCdevkit folder (Annotations/ and ImageSets/Main/)",
    "a YOLO data.yaml",
)


def voc_root(path: Path) -> Path | None:
    """`path` when it is a VOC year folder, else its only VOC year subfolder (VOCdevkit/VOC2007); None otherwise."""
    if is_voc_root(path):
        return path
    years = sorted(p for p in path.iterdir() if p.is_dir() and is_voc_root(p)) if path.is_dir() else []
    if len(years) > 1:
        raise ValueError(
            f"{path} holds several VOC folders ({', '.join(p.name for p in years)}): "
            f"give one as --data-path, e.g. {years[0]}"
        )
    return years[0] if years else None


def detect_format(path: Path) -> str:
    """ "coco", "voc" or "yolo" for the dataset at `path`; a FileNotFoundError listing what was looked for."""
    if path.is_dir() and (path / "annotations").is_dir():
        return "coco"
    if voc_root(path) is not None:
        return "voc"
    if find_data_yaml(path) is not None:
        return "yolo"
    raise FileNotFoundError(
        f"no dataset found at {path}: looked for {'; '.join(LOOKED_FOR)} "
        "(or give --data-format, or --train-ann/--train-images and --val-ann/--val-images)"
    )


def resolve_source(
    data_path: str | Path | None,
    split: str,
    data_format: str | None = None,
    ann_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    allow_outside_paths: bool = False,
) -> DataSource:
    """The split `split` of what the user gave: explicit COCO paths (ann_file and image_dir) win over
    data_path; data_format None means detect it. Every file the dataset names must lie inside its folder
    unless allow_outside_paths (ssdfast.data.dataset_files); explicit paths are the user's own."""
    if ann_file or image_dir:
        if not (ann_file and image_dir):
            given, missing = ("annotation file", "image folder") if ann_file else ("image folder", "annotation file")
            raise ValueError(f"{split}: an explicit {given} needs its {missing} too (a COCO file and its images)")
        if data_format not in (None, "coco"):
            raise ValueError(f"{split}: an explicit annotation file is COCO JSON, not --data-format {data_format}")
        return coco_source(ann_file, image_dir)
    if data_path is None:
        raise ValueError(f"no {split} data given: --data-path, or a COCO annotation file and its image folder")
    path = Path(data_path)
    if not path.exists():
        expected = "; or ".join(LOOKED_FOR).replace("{train,val}", split)
        raise FileNotFoundError(f"dataset not found: {path} does not exist (expected {expected})")
    data_format = data_format or detect_format(path)
    if data_format == "coco":
        return coco_source(*coco_paths(path, split, allow_outside_paths))
    if data_format == "voc":
        return read_voc(voc_root(path) or path, split, allow_outside_paths)
    if data_format == "yolo":
        return read_yolo(path, split, allow_outside_paths)
    raise ValueError(f"unknown data format {data_format!r}: one of {', '.join(DATA_FORMATS)}")
