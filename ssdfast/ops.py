"""The ssdfast operators: typed, documented wrappers over ``torch.ops.ssdfast.*``.

Each wrapper calls the compiled kernel (``ssdfast._C``: C++ on CPU, CUDA on GPU) when one is
registered for the input's device, and its pure-PyTorch twin in :mod:`ssdfast.reference` otherwise,
so ``import ssdfast`` works without a build. :func:`backend` says which one runs.

Conventions: boxes are xyxy (x1, y1, x2, y2); float outputs are float32 whatever the input float
type (fp16/bf16 inputs are computed in fp32); anchors are xyxy [A, 4]. Fake (meta) kernels are
registered, so the ops trace under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ssdfast import reference
from ssdfast.anchors import SSD_DEFAULTS

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.ssdfast.*)

    LOAD_ERROR: Exception | None = None
except ImportError as error:  # a broken or skipped build: everything falls back to the reference
    LOAD_ERROR = error
    warnings.warn(f"ssdfast._C is not available ({error}); using the pure-PyTorch reference ops", stacklevel=2)

OP_NAMES = ("box_iou", "box_encode", "box_decode", "match", "match_encode", "batched_nms_padded", "nms")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _registered(op: str, key: str) -> bool:
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"ssdfast::{op}", key)


# Looked up once here (not per call): plain dict lookups stay cheap and torch.compile-friendly.
_COMPILED = {(op, dev): _registered(op, key) for op in OP_NAMES for dev, key in _DISPATCH_KEYS.items()}


def _use_compiled(op: str, tensor: Tensor) -> bool:
    return _COMPILED.get((op, tensor.device.type), False)


def backend(device: str | torch.device = "cpu") -> str:
    """Which implementation runs on `device`: 'compiled' (ssdfast._C kernels), 'reference'
    (pure PyTorch), or 'mixed' (some ops compiled)."""
    dev = torch.device(device).type
    found = [_COMPILED.get((op, dev), False) for op in OP_NAMES]
    return "compiled" if all(found) else "reference" if not any(found) else "mixed"


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): xyxy boxes.
    Returns:
        Tensor[N, M] float32.
    """
    if _use_compiled("box_iou", boxes1):
        return torch.ops.ssdfast.box_iou(boxes1, boxes2)
    return reference.box_iou(boxes1, boxes2)


def box_encode(
    boxes: Tensor,
    anchors: Tensor,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> Tensor:
    """Encode xyxy boxes as SSD offsets relative to the anchors.

    Args:
        boxes (Tensor[..., A, 4]): xyxy boxes, one per anchor.
        anchors (Tensor[A, 4]): xyxy default boxes.
    Returns:
        Tensor[..., A, 4] float32: ((cx - acx) / aw / cv, (cy - acy) / ah / cv, log(w / aw) / sv, log(h / ah) / sv).
    """
    if _use_compiled("box_encode", boxes):
        return torch.ops.ssdfast.box_encode(boxes, anchors, center_variance, size_variance)
    return reference.box_encode(boxes, anchors, center_variance, size_variance)


def box_decode(
    offsets: Tensor,
    anchors: Tensor,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> Tensor:
    """Inverse of :func:`box_encode`: offsets (Tensor[..., A, 4]) -> xyxy boxes (Tensor[..., A, 4] float32)."""
    if _use_compiled("box_decode", offsets):
        return torch.ops.ssdfast.box_decode(offsets, anchors, center_variance, size_variance)
    return reference.box_decode(offsets, anchors, center_variance, size_variance)


def match(gt_boxes: Tensor, gt_mask: Tensor, anchors: Tensor, iou_threshold: float = SSD_DEFAULTS.match_iou) -> Tensor:
    """SSD matching of padded ground truth to anchors (docs/ssd.md section 2).

    Each anchor takes its best ground truth; each ground truth then claims its best anchor whatever
    the IoU (a later ground truth wins a contested anchor); anchors with IoU > threshold (or claimed)
    are positives. Ties: lowest index wins.

    Args:
        gt_boxes (Tensor[B, G, 4]): xyxy ground truth, padded to G per image (G may be 0).
        gt_mask (Tensor[B, G] bool): True for real boxes.
        anchors (Tensor[A, 4]): xyxy default boxes.
    Returns:
        Tensor[B, A] int64: matched ground-truth index per anchor, -1 for background.
    """
    if _use_compiled("match", gt_boxes):
        return torch.ops.ssdfast.match(gt_boxes, gt_mask, anchors, iou_threshold)
    return reference.match(gt_boxes, gt_mask, anchors, iou_threshold)


def match_encode(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    anchors: Tensor,
    iou_threshold: float = SSD_DEFAULTS.match_iou,
    center_variance: float = SSD_DEFAULTS.center_variance,
    size_variance: float = SSD_DEFAULTS.size_variance,
) -> tuple[Tensor, Tensor]:
    """Fused :func:`match` + :func:`box_encode`: the MultiBox loss targets in one pass.

    Args:
        gt_boxes (Tensor[B, G, 4]): xyxy ground truth, padded.
        gt_labels (Tensor[B, G] int): class per box, 1..C; 0 marks padding.
        anchors (Tensor[A, 4]): xyxy default boxes.
    Returns:
        offsets (Tensor[B, A, 4] float32): zero for background anchors.
        labels (Tensor[B, A] int64): 0 for background anchors.
    """
    if _use_compiled("match_encode", gt_boxes):
        return torch.ops.ssdfast.match_encode(
            gt_boxes, gt_labels, anchors, iou_threshold, center_variance, size_variance
        )
    return reference.match_encode(gt_boxes, gt_labels, anchors, iou_threshold, center_variance, size_variance)


def batched_nms_padded(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float,
    score_threshold: float = float("-inf"),
    max_output: int = 200,
) -> tuple[Tensor, Tensor]:
    """Class-aware NMS per image with a fixed-size output and no host synchronisation (CUDA-graph safe).

    Args:
        boxes (Tensor[B, N, 4]): xyxy candidates. scores (Tensor[B, N]). classes (Tensor[B, N] int).
        iou_threshold: a box is suppressed by a kept box of its class with IoU > iou_threshold.
        score_threshold: candidates with score <= this are ignored.
        max_output: K, the width of the output.
    Returns:
        keep (Tensor[B, K] int64): kept candidate indices by decreasing score, padded with -1.
        counts (Tensor[B] int64): how many entries of each row are real.
    """
    if _use_compiled("batched_nms_padded", boxes):
        return torch.ops.ssdfast.batched_nms_padded(boxes, scores, classes, iou_threshold, score_threshold, max_output)
    return reference.batched_nms_padded(boxes, scores, classes, iou_threshold, score_threshold, max_output)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Drop-in for ``torchvision.ops.nms``: boxes (Tensor[N, 4]), scores (Tensor[N]) -> kept indices
    (Tensor[n] int64) by decreasing score. The output length depends on the data: one host sync on CUDA.

    The same on every backend (compiled CPU, CUDA, reference), and different from torchvision in two
    ways: a NaN score is never kept (torchvision ranks NaN first and keeps it), and boxes and scores
    must be floating point (integer boxes are an error, not silently converted)."""
    if _use_compiled("nms", boxes):
        return torch.ops.ssdfast.nms(boxes, scores, iou_threshold)
    return reference.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Drop-in for ``torchvision.ops.batched_nms``: NMS within each category of ``idxs`` (Tensor[N]).

    Returns kept indices (Tensor[n] int64) by decreasing score. One host sync (the output length).
    Like ``nms``, NaN scores are never kept; so are -inf scores (they are not above the -inf threshold).
    """
    keep, counts = batched_nms_padded(boxes[None], scores[None], idxs[None], iou_threshold, float("-inf"), len(scores))
    return keep[0, : int(counts[0])]


if LOAD_ERROR is None:

    @torch.library.register_fake("ssdfast::box_iou")
    def _(boxes1, boxes2):
        return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("ssdfast::box_encode")
    def _(boxes, anchors, center_variance, size_variance):
        return boxes.new_empty(boxes.shape, dtype=torch.float32)

    @torch.library.register_fake("ssdfast::box_decode")
    def _(offsets, anchors, center_variance, size_variance):
        return offsets.new_empty(offsets.shape, dtype=torch.float32)

    @torch.library.register_fake("ssdfast::match")
    def _(gt_boxes, gt_mask, anchors, iou_threshold):
        return gt_boxes.new_empty((gt_boxes.shape[0], anchors.shape[0]), dtype=torch.long)

    @torch.library.register_fake("ssdfast::match_encode")
    def _(gt_boxes, gt_labels, anchors, iou_threshold, center_variance, size_variance):
        batch, num_anchors = gt_boxes.shape[0], anchors.shape[0]
        return (
            gt_boxes.new_empty((batch, num_anchors, 4), dtype=torch.float32),
            gt_boxes.new_empty((batch, num_anchors), dtype=torch.long),
        )

    @torch.library.register_fake("ssdfast::batched_nms_padded")
    def _(boxes, scores, classes, iou_threshold, score_threshold, max_output):
        return (
            boxes.new_empty((boxes.shape[0], max_output), dtype=torch.long),
            boxes.new_empty((boxes.shape[0],), dtype=torch.long),
        )

    @torch.library.register_fake("ssdfast::nms")
    def _(boxes, scores, iou_threshold):
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept,), dtype=torch.long)
