"""Pictures of a training run, for people who would rather look than read: the run's curves
(results.png), grids of images with their boxes (train_batch0.jpg: are the labels read right?; the val
images with their ground truth and with the model's detections), precision-recall curves and the
confusion matrix. Matplotlib's object API (no pyplot state, no display).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssdfast.evaluation.confusion import most_common_classes, normalise_rows
from ssdfast.machinery.user_errors import parse_json
from ssdfast.visualize import draw_detections

LOSS_PARTS = ("loss", "loss_loc", "loss_conf")


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-iteration records, per-epoch records) of a log.jsonl, each in the order written; a run resumed
    after a kill may have logged an iteration twice: the later record wins. A line that is not a record
    (torn by a kill in the middle of its write, or not written by ssdfast) is passed over."""
    steps, epochs = {}, {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = parse_json(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            continue
        if isinstance(record.get("iteration"), int):
            steps[(record["epoch"], record["iteration"])] = record
        elif "loss" in record:
            epochs[record["epoch"]] = record
    return [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)]


def save_figure(figure: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return Path(path)


def plot_run(log_path: str | Path, out_path: str | Path) -> Path:
    """results.png: the loss and its parts per iteration and per epoch, the lr, and the COCO AP/AP50 per
    evaluated epoch, from log.jsonl."""
    steps, epochs = read_log(log_path)
    figure = Figure(figsize=(15, 4), layout="constrained")
    loss_ax, lr_ax, ap_ax = figure.subplots(1, 3)
    if steps:
        per_epoch = max(s["iteration"] for s in steps) + 1
        x = [s["epoch"] + s["iteration"] / per_epoch for s in steps]
        for part in LOSS_PARTS:
            loss_ax.plot(x, [s[part] for s in steps], label=f"{part} (logged steps)", alpha=0.5)
        lr_ax.plot(x, [s["lr"] for s in steps])
    for part in LOSS_PARTS:
        loss_ax.plot([e["epoch"] + 1 for e in epochs], [e[part] for e in epochs], "o-", label=f"{part} (epoch mean)")
    evaluated = [e for e in epochs if "coco/AP" in e]
    for key in ("coco/AP", "coco/AP50"):
        ap_ax.plot([e["epoch"] + 1 for e in evaluated], [e[key] for e in evaluated], "o-", label=key.split("/")[1])
    for ax, title in ((loss_ax, "training loss"), (lr_ax, "learning rate"), (ap_ax, "COCO val")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=7)
    if evaluated:
        ap_ax.legend()
        ap_ax.set_ylim(0, 1)
    return save_figure(figure, out_path)


def batch_grid(
    images: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    columns: int = 4,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """A BGR uint8 grid of images [B, H, W, 3] (RGB uint8) with their boxes drawn: boxes [B, G, 4]
    normalised xyxy and labels [B, G] (0 = padding), class names for labels 1..C; ground truth (names
    only), or detections with their scores [B, G]."""
    tiles = []
    for i, (image, image_boxes, image_labels) in enumerate(zip(images, boxes, labels)):
        keep = image_labels > 0
        h, w = image.shape[:2]
        pixels = image_boxes[keep] * np.array([w, h, w, h], dtype=np.float32)
        shown = None if scores is None else scores[i][keep]
        tiles.append(draw_detections(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), pixels, shown, image_labels[keep], names))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def plot_precision_recall(curves: dict[str, np.ndarray], out_path: str | Path, title: str) -> Path:
    """One precision-recall curve per class: curves {name: precision at recall 0, 0.01, ..., 1} (COCOeval's
    101 recall points, -1 where the class has no ground truth), with the class's area under it."""
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.subplots()
    recall = np.linspace(0, 1, 101)
    for name, precision in curves.items():
        valid = precision > -1
        if valid.any():
            ax.plot(recall[valid], precision[valid], label=f"{name} {precision[valid].mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncols=2 if len(curves) > 12 else 1)
    return save_figure(figure, out_path)


SHOWN_CLASSES = 20  # a confusion matrix of more classes shows those with the most objects
ANNOTATED_CLASSES = 30  # up to this many classes shown, each cell carries its value


def plot_confusion(counts: np.ndarray, names: list[str], out_path: str | Path, title: str) -> Path:
    """The confusion matrix counts [C+1, C+1] (ssdfast.evaluation.confusion: rows the true class, columns
    the predicted class, the last of each the background) as an image, each row normalised over all its
    classes; names: the C class names. Of more than SHOWN_CLASSES classes, those with the most objects."""
    classes = len(names)
    shown = most_common_classes(counts, SHOWN_CLASSES) + [classes]
    matrix = normalise_rows(counts)[np.ix_(shown, shown)]
    labels = [names[c] for c in shown[:-1]] + ["background"]
    side = 3.0 + 0.4 * len(shown)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(shown))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    if len(shown) <= ANNOTATED_CLASSES:
        for (row, column), value in np.ndenumerate(matrix):
            if value >= 0.005:  # what rounds to 0.00 stays blank
                color = "white" if value > 0.5 else "black"
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    if classes > SHOWN_CLASSES:
        title += f"\n{SHOWN_CLASSES} of {classes} classes (those with the most objects)"
    ax.set_title(title, fontsize=9)
    return save_figure(figure, out_path)
