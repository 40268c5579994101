"""The public API: ``ssdfast.load(path)`` -> Detector; ``detector.predict(images)`` -> one Result per image.

    import ssdfast
    detector = ssdfast.load("trained_models/best.pt")
    detector.predict("street.jpg")[0].save("street_detections.jpg")

Every supported file (an ssdfast, older-implementation or NVIDIA checkpoint; a .onnx or .pt2 written by
tools/export.py) gives the same Detector: which kind of file it is, is decided once, in ssdfast.inference.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from ssdfast import flag_types as flags
from ssdfast.data.coco import decode_image
from ssdfast.defaults import DISPLAY_POLICY, IMAGE_SUFFIXES
from ssdfast.inference import ScoreCut, as_detector, keeping_weaker, load_detector, run_detector, to_records
from ssdfast.machinery.outputs import writable_file
from ssdfast.machinery.runtime import pick_device
from ssdfast.postprocess import Detections
from ssdfast.visualize import draw_detections

SOURCE_KINDS = (
    "a path, a folder, a list of these, a PIL image, an RGB uint8 numpy array [H, W, 3] or a tensor [3, H, W]"
)


def load(
    path: str | Path,
    device: str | None = None,
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    max_det: int | None = None,
) -> Detector:
    """A Detector from any supported file: an ssdfast checkpoint (tools/train.py's best.pt or last.pt), the
    older implementation's or NVIDIA's, or a .onnx / .pt2 written by tools/export.py.

    device: "cpu", "cuda", "cuda:1" (default: CUDA when there is a GPU). score_threshold: keep detections
    scoring above it (default 0.3). nms_threshold: NMS IoU (default 0.45; an exported file's own). max_det:
    most detections per image (default 200; an exported file gives at most what it was exported with).
    Raises ssdfast.machinery.checkpoint.CheckpointError (a RuntimeError naming the file) for a file it cannot use,
    and ValueError (TypeError) naming the argument for a value out of range (of the wrong type), the same
    ranges as the tools' flags; a device this machine lacks is a ValueError saying what it has."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file name (str or Path), got {type(path).__name__}")
    device = pick_device(device, name="device")
    given = {  # field: (value, the argument's name, its flag's type)
        "score_threshold": (score_threshold, "score_threshold", flags.score_threshold),
        "nms_threshold": (nms_threshold, "nms_threshold", flags.nms_threshold),
        "max_detections": (max_det, "max_det", flags.max_detections),
    }
    changes = {field: flags.argument(name, v, parse) for field, (v, name, parse) in given.items() if v is not None}
    policy = replace(DISPLAY_POLICY, **changes)
    # An exported file: this score threshold, and the NMS threshold inside it unless one is given.
    nms = {} if nms_threshold is None else {"nms_threshold": policy.nms_threshold}
    model, meta = load_detector(path, device, policy={"score_threshold": policy.score_threshold, **nms})
    return Detector(as_detector(model, policy=policy), meta, policy.max_detections)


class Detector:
    """A trained detector (see load). predict() is for people; detector(images) -> Detections is the
    interface the evaluation loop uses (ssdfast.evaluation.loop.predict), the same for every kind of file.

    names: the class names, label i is names[i - 1]; meta: model_name, num_classes, category_ids, ..."""

    def __init__(self, core, meta: dict, max_det: int = DISPLAY_POLICY.max_detections):
        self.core = core  # ssdfast.inference.as_detector's: a Deployed, or a PyTorch SSD + postprocess
        self.meta, self.max_det = meta, max_det
        self.names: list[str] = list(meta["category_names"])

    @property
    def device(self) -> torch.device:
        return self.core.device

    def __call__(self, images: Tensor) -> Detections:
        """Images [B, 3, 300, 300] normalised as ssdfast.data.transforms does -> Detections (normalised boxes)."""
        return self.core(images)

    def predict(self, source, batch_size: int = 8) -> list[Result]:
        """Detect objects in `source`: an image file, a folder (its images, sorted by name), a PIL image, a
        numpy array (RGB, uint8, [H, W, 3]; grayscale [H, W] is accepted; OpenCV's BGR must be converted
        first: image[..., ::-1]), a tensor [3, H, W] (uint8 0-255 or float 0-1, RGB) or [B, 3, H, W], or a
        list of any of these. batch_size: images per forward pass (1 to 4096). Returns one Result per image, in
        order. Raises FileNotFoundError for a missing file or a folder without images, ValueError for an
        unreadable file, TypeError/ValueError naming what was given for anything else.

        When there are detections, but none above the score threshold, it warns once (UserWarning) with the
        best score, so an empty result is not taken for a broken detector."""
        batch_size = flags.argument("batch_size", batch_size, flags.batch_size)
        items = _single_images(source)
        results = []
        # Weaker detections are kept and cut here (ScoreCut), to say what the best one scored.
        detector, cut = keeping_weaker(self.core), ScoreCut(self.core.policy.score_threshold)
        for start in range(0, len(items), batch_size):
            images, paths = zip(*(_rgb_and_path(item) for item in items[start : start + batch_size]))
            for image, path, dets in zip(images, paths, run_detector(detector, list(images))):
                kept = {key: value[: self.max_det] for key, value in cut(dets).items()}  # sorted by score: the best
                results.append(Result(**kept, image=image, path=path, categories=self.names))
        if cut.note():
            warnings.warn(f"{cut.note()}: a lower ssdfast.load(..., score_threshold=) keeps them", stacklevel=2)
        return results

    def __repr__(self) -> str:
        return f"Detector({self.meta['model_name']}, {len(self.names)} classes, {self.device})"


@dataclass
class Result:
    """The detections in one image.

    boxes: float32 [N, 4] pixel xyxy, inside the image; scores: float32 [N], decreasing; labels: int64 [N]
    (1..C); names: the class name of each box; image: the RGB uint8 [H, W, 3] they were found in; path:
    its file (None for an image given in memory); categories: all class names (label i is categories[i - 1])."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    image: np.ndarray = field(repr=False)
    path: Path | None
    categories: list[str] = field(repr=False)

    @property
    def names(self) -> list[str]:
        return [self.categories[int(label) - 1] for label in self.labels]

    def draw(self) -> np.ndarray:
        """The image with the boxes, names and scores drawn: RGB uint8 [H, W, 3] (a copy)."""
        return cv2.cvtColor(self._drawn_bgr(), cv2.COLOR_BGR2RGB)

    def save(self, path: str | Path) -> Path:
        """Write draw() to `path` (its suffix picks the format: .jpg, .png, ...), whole or not at all, never
        over the input image. Returns the path."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file name (str or Path), got {type(path).__name__}")
        path = writable_file(path, "output image")
        if self.path is not None and path.exists() and os.path.samefile(path, self.path):
            raise ValueError(f"{path} is the input image: choose another file name for the drawing")
        try:
            ok, encoded = cv2.imencode(path.suffix, self._drawn_bgr())
        except cv2.error:
            ok = False
        if not ok:
            raise ValueError(f"cannot write an image as {path.name}: use a suffix such as .jpg or .png")
        _write_whole(path, encoded.tobytes())
        return path

    def to_dict(self) -> dict:
        """JSON-ready: {"path", "height", "width", "detections": records as in tools/detect.py's JSON}."""
        height, width = self.image.shape[:2]
        dets = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        return {
            "path": None if self.path is None else str(self.path),
            "height": height,
            "width": width,
            "detections": to_records(dets, self.categories),
        }

    def _drawn_bgr(self) -> np.ndarray:
        bgr = cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR)
        return draw_detections(bgr, self.boxes, self.scores, self.labels, self.categories)


def _write_whole(path: Path, data: bytes) -> None:
    """`path` gets `data` whole or not at all: a temporary file in the same folder, then a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask, as open() does
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _single_images(source) -> list:
    """`source` as a flat list of single images (file paths, arrays, PIL images, tensors); folders listed."""
    if isinstance(source, (list, tuple)):
        return [item for part in source for item in _single_images(part)]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise FileNotFoundError(f"no images in the folder {path} (looked for {suffixes})")
            return images
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        return [path]
    if isinstance(source, Tensor) and source.dim() == 4:
        return list(source)
    return [source]


def _rgb_and_path(item) -> tuple[np.ndarray, Path | None]:
    """One image of _single_images -> (RGB uint8 [H, W, 3], its file or None)."""
    if isinstance(item, Path):
        try:
            return decode_image(item), item
        except ValueError as error:  # names the file and why: empty, truncated, over a limit, ...
            raise ValueError(f"cannot read the image {error}") from None
    if isinstance(item, np.ndarray):
        return _rgb_array(item), None
    if isinstance(item, Tensor):
        return _rgb_tensor(item), None
    pil = sys.modules.get("PIL.Image")  # a PIL image means PIL is imported already: no import here
    if pil is not None and isinstance(item, pil.Image):
        if 0 in item.size:
            raise ValueError(f"source: a PIL image of {item.width}x{item.height} pixels has nothing to detect in")
        return np.asarray(item.convert("RGB")), None
    raise TypeError(f"cannot use a {type(item).__module__}.{type(item).__name__} as an image: give {SOURCE_KINDS}")


def _rgb_array(image: np.ndarray) -> np.ndarray:
    """A numpy image -> RGB uint8 [H, W, 3]; grayscale [H, W] or [H, W, 1] is repeated to 3 channels."""
    if image.dtype != np.uint8:
        raise TypeError(
            f"a numpy image must be uint8 (0-255), got {image.dtype}: for floats in [0, 1] "
            "give (image * 255).round().astype(np.uint8)"
        )
    if 0 in image.shape:
        raise ValueError(f"source: a numpy image of shape {image.shape} has no pixels")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"a numpy image must be RGB [H, W, 3] or grayscale [H, W], got shape {image.shape}"
            f"{_shape_hint(image.shape)}"
        )
    return np.ascontiguousarray(image)


def _shape_hint(shape: tuple) -> str:
    if len(shape) == 3 and shape[2] == 4:
        return " (with alpha: give image[..., :3])"
    if len(shape) == 3 and shape[0] in (1, 3):
        return " (channels first: give image.transpose(1, 2, 0), or a torch tensor)"
    return ""


def _rgb_tensor(image: Tensor) -> np.ndarray:
    """A tensor [3, H, W] or [1, H, W], uint8 0-255 or float 0-1 (torchvision's layouts) -> RGB uint8 [H, W, 3]."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"a tensor image must be [3, H, W] (channels first) or [B, 3, H, W], got shape {list(image.shape)}"
        )
    if 0 in image.shape:
        raise ValueError(f"source: a tensor image of shape {list(image.shape)} has no pixels")
    image = image.detach().cpu()
    if image.is_floating_point():
        if not ((image >= 0) & (image <= 1)).all():
            raise ValueError("a float tensor image must hold values in [0, 1] (as torchvision's to_tensor gives)")
        image = (image * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise TypeError(f"a tensor image must be uint8 (0-255) or float (0-1), got {image.dtype}")
    return _rgb_array(image.permute(1, 2, 0).numpy())
