"""What a training run draws, for people who would rather look than read (rank 0):
train_batch0.jpg from the first batch trained (augmented images with their ground truth: are the labels
read right?), predictions on a few val images in TensorBoard at each evaluation, and results.png (loss parts,
lr, AP) and pr.png (precision-recall per class at IoU 0.5) after each epoch. Every file is written whole
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
from ssdfast.machinery.outputs import OutputError, atomic_output
from ssdfast.postprocess import postprocess, scale_to_image
from ssdfast.training.plots import batch_grid, plot_precision_recall, plot_run
from ssdfast.visualize import draw_detections

SHOWN = 8  # images in train_batch0.jpg
PREDICTED = 4  # val images shown with their predictions in TensorBoard
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
    """RGB uint8 grid of val images [N, 3, H, W] (as a loader gives them) with the model's detections drawn."""
    model.eval()
    normalised = images.to(device)
    normalised = normalise(normalised) if normalised.dtype == torch.uint8 else normalised.float()
    locs, confs = model(normalised)
    dets = postprocess(locs.float(), confs.float(), model.anchors, model.anchor_spec.variances, DISPLAY_POLICY)
    pixels = rgb_uint8(images)
    n, height, width = pixels.shape[:3]
    boxes = scale_to_image(dets.boxes.clamp(0, 1), torch.tensor([[height, width]] * n, device=dets.boxes.device))
    tiles = [
        draw_detections(
            np.ascontiguousarray(pixels[i][..., ::-1]),
            boxes[i, :c].cpu().numpy(),
            dets.scores[i, :c].cpu().numpy(),
            dets.labels[i, :c].cpu().numpy(),
            names,
        )[..., ::-1]
        for i, c in enumerate(dets.counts.tolist())
    ]
    return np.concatenate(tiles, axis=1)


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
