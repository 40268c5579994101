"""COCO-format detection dataset for the PyTorch data path (any category set).

Layout (COCO 2017's): DATA/annotations/instances_{split}2017.json and DATA/{split}2017/*.jpg; any other
source (explicit paths, Pascal VOC, YOLO: ssdfast.data.formats) arrives as a DataSource, the same
in-memory COCO dict, and goes through the same checks.
Labels: 0 = background, 1..C = the categories sorted by category id (COCO: 80).
Crowd boxes and degenerate boxes are dropped; boxes are clipped to the image. Training skips
images without boxes; evaluation keeps every image. An unreadable image (missing, zero bytes,
not an image, truncated JPEG, a header over the pixel cap) does not stop the run: the sample comes
back as {"unreadable": path} and the collate counts it. Image paths that resolve outside the image
folder, and paths that are not regular files, are left out at load and counted (ssdfast.data.dataset_files
says why).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ssdfast.data.dataset_files import UnusableFile, contained, open_regular, read_bounded, resolves_inside
from ssdfast.data.draws import draw
from ssdfast.data.image_files import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, image_bytes
from ssdfast.data.transforms import SSDTransform
from ssdfast.data.validate import SHOW_IDS, ValidationReport, validate_coco
from ssdfast.machinery.user_errors import parse_json, shown

COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)  # the 80 COCO 2017 categories in category-id order: label i + 1


OUTSIDE_REASON = "image paths outside the image folder"
NOT_REGULAR_REASON = "image paths that are not regular files"
CANNOT_OPEN_REASON = "image paths the file system cannot open"
LEFT_OUT_AT_LOAD = {  # why an image is left out when the dataset loads -> its warning
    "missing image files": "{n} image file(s) listed in {ann_file} are missing: left out",
    OUTSIDE_REASON: "{n} image path(s) in {ann_file} lead outside the image folder: left out "
    "(--allow-outside-paths reads them)",
    NOT_REGULAR_REASON: "{n} image path(s) in {ann_file} are not regular files (a folder, a FIFO): left out",
    CANNOT_OPEN_REASON: "{n} image path(s) in {ann_file} cannot be opened (a name too long for the file system, "
    "no permission): left out",
}
NO_BOX_REASON = "training images without a usable box"


def images_summary(num_images: int, dropped: dict, split: str = "train") -> str:
    """A split's image count for a run's summary line, naming the images training left out for having no
    usable box (none, or only crowd and degenerate ones): '22 train images (2 without a usable box left
    out)'; dropped: the dataset's {reason: count}."""
    no_box = dropped.get(NO_BOX_REASON, 0)
    images = f"{num_images} {split} image{'' if num_images == 1 else 's'}"
    return images + (f" ({no_box} without a usable box left out)" if no_box else "")


def coco_paths(root: str | Path, split: str, allow_outside: bool = False) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split in the COCO layout, checked to exist; the annotation
    file must lie inside DATA/annotations/ (ssdfast.data.dataset_files), the folder itself may be a link."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    image_dir = root / f"{split}2017"
    if not ann_file.exists():  # a FIFO or folder there is refused when read (ssdfast.data.dataset_files)
        raise FileNotFoundError(
            f"annotation file not found: {ann_file} "
            f"(expected the COCO layout: DATA/annotations/instances_{split}2017.json)"
        )
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir} (expected the COCO layout: DATA/{split}2017/)")
    return contained(ann_file.parent, ann_file.name, allow_outside), image_dir


@dataclass(frozen=True)
class DataSource:
    """One split of a dataset read into the COCO format, whatever it came as: what CocoDetection loads."""

    annotations: dict  # COCO-format images / annotations / categories, not yet checked (load_coco checks)
    image_dir: Path  # every image's file_name is relative to this folder
    origin: Path  # what the split was read from, for messages: annotation file, VOC list, data.yaml
    data_format: str = "coco"  # "coco", "voc" or "yolo"
    found: ValidationReport = field(default_factory=ValidationReport)  # what the reader itself dropped


def read_coco_json(ann_file: Path) -> dict:
    """The parsed annotation file (a regular file, of any size: COCO's own is 450 MB); a ValueError
    naming it when it is not JSON."""
    with open_regular(ann_file, None) as file:
        raw = read_bounded(file, ann_file, None)
    try:
        return parse_json(raw)
    except ValueError as error:  # not JSON, not UTF-8, an integer of over 4300 digits, nested too deeply
        raise ValueError(f"cannot parse COCO annotation file {ann_file}: {error}") from error


def coco_source(ann_file: str | Path, image_dir: str | Path) -> DataSource:
    """A COCO annotation file and its image folder, anywhere (--train-ann / --train-images)."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    if not ann_file.exists():  # a FIFO or folder there is refused when read (ssdfast.data.dataset_files)
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    return DataSource(read_coco_json(ann_file), image_dir, ann_file)


def load_coco(source: DataSource | str | Path) -> COCO:
    """pycocotools COCO object of a checked DataSource or annotation file (ssdfast.data.validate): a
    ValueError naming the file, record and field for what cannot be used; a warning counting what was
    dropped (the reader's own drops first). The report stays on the object as `coco.validation`."""
    if not isinstance(source, DataSource):
        source = DataSource(read_coco_json(source), Path(source).parent, Path(source))
    clean, report = validate_coco(source.annotations, source.origin)
    report.dropped = {**source.found.dropped, **report.dropped}
    if report.message():
        warnings.warn(f"{source.origin}: {report.message()}", stacklevel=2)
    coco = COCO()
    coco.dataset = clean
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.validation = report
    return coco


def _jpeg_is_complete(raw: bytes) -> bool:
    """A JPEG ends its last scan with an EOI marker (FF D9). Scan data cannot contain FF D9 (FF bytes
    are stuffed), so "an EOI after the last SOS (FF DA)" tells a complete file from a truncated one."""
    sos = raw.rfind(b"\xff\xda")
    return sos != -1 and raw.rfind(b"\xff\xd9") > sos


def decode_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file; a ValueError naming the file and why it cannot be used:
    missing, not a regular file, over max_bytes (checked before reading) or max_pixels (width x height,
    checked from the header before decoding), empty, truncated, not an image.

    OpenCV applies the EXIF orientation and converts grayscale, CMYK and PNG (with alpha) to 3 channels.
    """
    try:
        raw = image_bytes(path, max_pixels, max_bytes)
    except FileNotFoundError:
        raise UnusableFile(path, "missing") from None
    if raw[:2] == b"\xff\xd8" and not _jpeg_is_complete(raw):
        raise UnusableFile(path, "a truncated JPEG")
    try:
        image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # what OpenCV refuses by itself (its own pixel limit, a broken stream)
        image = None
    if image is None:
        raise UnusableFile(path, "not an image OpenCV can decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> np.ndarray | None:
    """decode_image, or None when the image cannot be used (the datasets count it as unreadable)."""
    try:
        return decode_image(path, max_pixels, max_bytes)
    except UnusableFile:
        return None


def _image_file_problem(path: Path) -> str | None:
    """Why an image path of the annotations is left out at load (a LEFT_OUT_AT_LOAD reason: missing, a
    FIFO or a folder, a name over 255 bytes), or None when it is a regular file."""
    try:
        return None if stat.S_ISREG(os.stat(path).st_mode) else NOT_REGULAR_REASON
    except FileNotFoundError:
        return "missing image files"
    except (OSError, ValueError):  # ENAMETOOLONG, EACCES, ELOOP, a NUL byte
        return CANNOT_OPEN_REASON


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # [n, 4] float32 normalised xyxy, clipped, non-degenerate
    labels: np.ndarray  # [n] int64, 1..C


def parse_annotations(
    anns: list[dict], width: int, height: int, label_of: dict[int, int], dropped: Counter | None = None
):
    """COCO annotations of one image -> (boxes [n, 4] normalised xyxy, labels [n]); crowd, unknown-category
    and degenerate (zero/negative size, or outside the image) boxes are dropped, the rest clipped.
    `dropped`, if given, counts the dropped boxes by reason."""
    dropped = Counter() if dropped is None else dropped
    boxes, labels = [], []
    for ann in anns:
        if ann.get("iscrowd", 0):
            dropped["crowd boxes (VOC: difficult objects)"] += 1
            continue
        if ann.get("category_id") not in label_of or len(ann.get("bbox", ())) != 4:
            dropped["boxes of an unknown category"] += 1
            continue
        x, y, w, h = ann["bbox"]
        x1, y1 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
        x2, y2 = min(max((x + w) / width, 0.0), 1.0), min(max((y + h) / height, 0.0), 1.0)
        if x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2))
            labels.append(label_of[ann["category_id"]])
        else:
            dropped["degenerate boxes (no area inside the image)"] += 1
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


class CocoDetection(Dataset):
    """Samples {"image": [3, 300, 300], "boxes": [n, 4], "labels": [n], "image_id", "size": (h, w)}.

    Args:
        root: dataset folder in the COCO layout. split: "train" or "val".
        source: the split from anywhere else (ssdfast.data.formats.resolve_source); root is then unused.
        train: training augmentation and skip images without boxes (default: split == "train").
        seed: with the epoch (set_epoch) and the index, fixes every random choice of a sample.
        max_pixels: images whose header claims more (width x height) are not decoded (unreadable).
        max_image_bytes: image files larger than this are not read (unreadable).
        allow_outside_paths: also read files whose path resolves outside their folder (dataset_files).
    """

    def __init__(
        self,
        root=None,
        split: str = "train",
        train: bool | None = None,
        size: int = 300,
        seed: int = 0,
        source: DataSource | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_outside_paths: bool = False,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ):
        cv2.setNumThreads(1)  # the loader parallelises over images; OpenCV threads would only contend
        source = source or coco_source(*coco_paths(root, split, allow_outside_paths))
        root = source.origin if root is None else root
        self.root, self.split = root, split
        self.ann_file, self.image_dir, self.data_format = source.origin, source.image_dir, source.data_format
        self.train = split == "train" if train is None else train
        self.max_pixels, self.max_image_bytes = max_pixels, max_image_bytes
        self.transform = SSDTransform(size=size)
        self.seed, self.epoch = seed, 0
        self.coco = load_coco(source)
        self.category_ids = sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.records: list[ImageRecord] = []
        # What was left out and why (the annotation file's own problems first), for messages.
        self.dropped = Counter({k: len(v) for k, v in self.coco.validation.dropped.items()})
        left_out: dict[str, list[str]] = {}  # file names of the images left out at load, by LEFT_OUT_AT_LOAD reason
        for image_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[image_id]
            path = self.image_dir / info["file_name"]
            problem = (
                OUTSIDE_REASON
                if not allow_outside_paths and not resolves_inside(self.image_dir, info["file_name"])
                else _image_file_problem(path)  # one stat per image, once
            )
            if problem:
                self.dropped[problem] += 1
                left_out.setdefault(problem, []).append(info["file_name"])
                continue
            boxes, labels = parse_annotations(
                self.coco.imgToAnns.get(image_id, []), info["width"], info["height"], label_of, self.dropped
            )
            if self.train and len(boxes) == 0:
                self.dropped[NO_BOX_REASON] += 1
                continue
            self.records.append(ImageRecord(image_id, info["file_name"], info["height"], info["width"], boxes, labels))
        if self.records:  # (without any, _require_records says it all in one line)
            for why, names in left_out.items():
                listed = ", ".join(shown(n) for n in names[:SHOW_IDS]) + (", ..." if len(names) > SHOW_IDS else "")
                message = LEFT_OUT_AT_LOAD[why].format(n=len(names), ann_file=self.ann_file)
                warnings.warn(f"{self.image_dir}: {message} ({listed})", stacklevel=2)
        self._require_records()

    def _require_records(self) -> None:
        if not self.records:
            raise ValueError(
                f"no usable {self.split} images in {self.root}: {len(self.coco.imgs)} image(s) in "
                f"{self.ann_file}; "
                + (", ".join(f"{n} {why}" for why, n in self.dropped.items()) or "the file lists none")
            )

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """key: an index (augmented for the epoch of set_epoch) or (epoch, index), which is how the
        loader's persistent workers learn the epoch (their copy of the dataset never sees set_epoch)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        record = self.records[index]
        path = self.image_dir / record.file_name
        image = read_image(path, self.max_pixels, self.max_image_bytes)
        if image is None:
            return {"unreadable": str(path)}
        params = draw((self.seed, epoch, index), record.boxes, self.train)
        image, boxes, labels = self.transform(image, record.boxes.copy(), record.labels.copy(), params)
        return {
            "image": image,
            "boxes": boxes,
            "labels": labels,
            "image_id": record.image_id,
            "size": (record.height, record.width),
        }
