"""What a training run draws, for people who would rather look than read (rank 0), in its save folder:
  train_batch0.jpg        the first batch trained (augmented images with their ground truth: are the
                          labels read right?), once per save folder;
  val_batch0_labels.jpg   the first val images with their ground truth, and
  val_batch0_pred.jpg     the same images with the model's detections (DISPLAY_POLICY: what detect.py
                          shows), both after each evaluation (the predictions also in TensorBoard);
  confusion_matrix.png    (and its counts in confusion_matrix.json) of that evaluation's detections above
                          DISPLAY_POLICY's score threshold against the ground truth at IoU 0.5;
  results.png, pr.png     loss parts, lr and AP; precision-recall per class at IoU 0.5, after each epoch.
The val pictures follow every evaluation, as pr.png does, so all of them show the same model, the latest;
they cost a forward pass of PREDICTED images and a figure per evaluation. Every file is written whole
(ssdfast.machinery.outputs.atomic_output), so a run killed while drawing keeps the previous picture. A
picture that cannot be written (a full disk) is a warning, once per picture, and the run goes on: pictures
are for looking, the checkpoints are what a run must keep (those stop it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from ssdfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from ssdfast.defaults import DISPLAY_POLICY
from ssdfast.evaluation.confusion import IOU_THRESHOLD, coco_confusion
from ssdfast.machinery.outputs import OutputError, atomic_output, write_json_atomic
from ssdfast.postprocess import postprocess
from ssdfast.training.plots import batch_grid, plot_confusion, plot_precision_recall, plot_run

SHOWN = 8  # images in train_batch0.jpg
PREDICTED = 4  # val images in val_batch0_labels.jpg and val_batch0_pred.jpg (one row)
_FAILED: set[str] = set()  # the pictures whose write failed in this process (each warned about once)


def best_effort(path: Path, draw: Callable[[], None]) -> None:
    """draw() writes the picture `path`; a failure is a warning, once per picture name, not the end of the run."""
    try:
        draw()
    except (OutputError, OSError) as error:
        if path.name not in _FAILED:
            _FAILED.add(path.name)
            print(f"warning: {error}; training goes on without {path.name}", file=sys.stderr)


def rgb_uint8(images: torch.Tensor) -> np.ndarray:
    """A batch's images [B, 3, H, W] -> RGB uint8 [B, H, W, 3]: uint8 as they are (the PyTorch path), or
    ImageNet-normalised floats (the GPU and DALI paths) mapped back."""
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        images = ((images.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def write_jpeg(path: Path, image_bgr: np.ndarray) -> None:
    with atomic_output(path, "picture", keep_suffix=True) as tmp:
        if not cv2.imwrite(str(tmp), image_bgr):
            raise OSError(f"OpenCV could not write {tmp}")


def save_batch(batch, names: list[str], path: Path) -> None:
    """train_batch0.jpg: a training batch as the model sees it (augmented), with its ground truth."""
    n = min(SHOWN, len(batch.images))
    grid = batch_grid(rgb_uint8(batch.images[:n]), batch.boxes[:n].cpu().numpy(), batch.labels[:n].cpu().numpy(), names)
    best_effort(path, lambda: write_jpeg(path, grid))


@torch.no_grad()
def prediction_grid(model, images: torch.Tensor, names: list[str], device) -> np.ndarray:
    """BGR uint8 grid (one row) of val images [N, 3, H, W] (as a loader gives them) with the model's
    detections drawn (DISPLAY_POLICY)."""
    model.eval()
    normalised = images.to(device)
    normalised = normalise(normalised) if normalised.dtype == torch.uint8 else normalised.float()
    locs, confs = model(normalised)
    dets = postprocess(locs.float(), confs.float(), model.anchors, model.anchor_spec.variances, DISPLAY_POLICY)
    return batch_grid(
        rgb_uint8(images),
        dets.boxes.clamp(0, 1).cpu().numpy(),
        dets.labels.cpu().numpy(),  # 0 past each image's count
        names,
        columns=len(images),
        scores=dets.scores.float().cpu().numpy(),
    )


class ValidationPictures:
    """The pictures of one evaluation: called with each val batch (the evaluation loop's on_batch), it
    keeps a copy of the first PREDICTED images and their ground truth (loaders reuse their buffers); then
    save() draws val_batch0_labels.jpg, val_batch0_pred.jpg and the confusion matrix into `folder`."""

    def __init__(self, folder: Path, info):
        self.folder, self.info = Path(folder), info  # info: the val loader's DatasetInfo
        self.images = self.boxes = self.labels = None

    def __call__(self, batch) -> None:
        if self.images is None and len(batch.images):
            self.images, self.boxes, self.labels = (
                t[:PREDICTED].detach().cpu().clone() for t in (batch.images, batch.boxes, batch.labels)
            )

    def save(self, model, device, results: list[dict], image_ids: list[int]) -> np.ndarray | None:
        """Draw the pictures (a failed write: a warning, once per picture) -> the predictions grid as RGB
        uint8 [H, W, 3] for TensorBoard, or None when no val image was read.
        results, image_ids: the evaluation's COCO results and the images it evaluated."""
        names = list(self.info.category_names)
        self.save_confusion(results, image_ids)
        if self.images is None:
            return None
        labels = batch_grid(
            rgb_uint8(self.images), self.boxes.numpy(), self.labels.numpy(), names, columns=len(self.images)
        )
        predictions = prediction_grid(model, self.images, names, device)
        for name, grid in (("val_batch0_labels.jpg", labels), ("val_batch0_pred.jpg", predictions)):
            best_effort(self.folder / name, lambda path=self.folder / name, grid=grid: write_jpeg(path, grid))
        return np.ascontiguousarray(predictions[..., ::-1])

    def save_confusion(self, results: list[dict], image_ids: list[int]) -> None:
        """confusion_matrix.json (the counts) and confusion_matrix.png (rows normalised); none when no image
        was evaluated (the last ones stay, as pr.png does)."""
        if not image_ids:
            return
        threshold = DISPLAY_POLICY.score_threshold
        counts = coco_confusion(self.info.coco, results, list(self.info.category_ids), threshold, image_ids)
        names = list(self.info.category_names)
        record = {
            "iou_threshold": IOU_THRESHOLD,
            "score_threshold": threshold,
            "rows": "true class",
            "columns": "predicted class",
            "classes": [*names, "background"],  # background row: false detections; column: missed objects
            "counts": counts.tolist(),
        }
        title = f"confusion matrix, IoU {IOU_THRESHOLD}, score > {threshold} (rows: true class, normalised)"

        def picture():
            with atomic_output(self.folder / "confusion_matrix.png", "picture", keep_suffix=True) as tmp:
                plot_confusion(counts, names, tmp, title)

        json_path, png_path = self.folder / "confusion_matrix.json", self.folder / "confusion_matrix.png"
        best_effort(json_path, lambda: write_json_atomic(json_path, record, "confusion matrix"))
        best_effort(png_path, picture)


def save_plots(folder: Path, curves: dict) -> None:
    """results.png from log.jsonl, and pr.png from the last evaluation's curves (if any)."""

    def results():
        with atomic_output(folder / "results.png", "picture", keep_suffix=True) as tmp:
            plot_run(folder / "log.jsonl", tmp)

    def precision_recall():
        with atomic_output(folder / "pr.png", "picture", keep_suffix=True) as tmp:
            plot_precision_recall(curves, tmp, "precision-recall per class, IoU 0.5 (last evaluation)")

    best_effort(folder / "results.png", results)
    if curves:
        best_effort(folder / "pr.png", precision_recall)
