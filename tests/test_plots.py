"""The run's pictures: log.jsonl read as the run meant it, results.png and the PR plot written as images,
and the batch grid drawing each ground-truth box in its class colour where the box is."""

import json

import cv2
import numpy as np

from ssdfast.training.plots import batch_grid, plot_precision_recall, plot_run, read_log
from ssdfast.visualize import class_color


def write_log(path):
    records = [
        {"epoch": e, "iteration": i, "loss": 9 - e - i / 4, "loss_loc": 3.0, "loss_conf": 6 - e, "lr": 0.01}
        for e in range(3)
        for i in range(4)
    ]
    records.insert(6, {**records[5], "loss": 123.0})  # a kill after iteration 1 of epoch 1: logged again
    records += [
        {
            "epoch": e,
            "loss": 8.0 - e,
            "loss_loc": 3.0,
            "loss_conf": 5.0 - e,
            "images_per_s": 10.0,
            **({"coco/AP": 0.1 * e, "coco/AP50": 0.2 * e} if e > 0 else {}),
        }
        for e in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_the_log_is_read_once_per_step_in_order(tmp_path):
    steps, epochs = read_log(write_log(tmp_path / "log.jsonl"))
    assert [(s["epoch"], s["iteration"]) for s in steps] == [(e, i) for e in range(3) for i in range(4)]
    assert steps[5]["loss"] == 123.0  # the later record of a step logged twice wins
    assert [e["epoch"] for e in epochs] == [0, 1, 2]


def test_results_png_and_pr_plot_are_images(tmp_path):
    image = cv2.imread(str(plot_run(write_log(tmp_path / "log.jsonl"), tmp_path / "results.png")))
    assert image.shape == (400, 1500, 3) and image.std() > 10
    curves = {"circle": np.linspace(1, 0.2, 101), "square": np.full(101, -1.0)}
    image = cv2.imread(str(plot_precision_recall(curves, tmp_path / "pr.png", "IoU 0.5")))
    assert image.shape == (600, 700, 3) and image.std() > 10


def test_batch_grid_draws_each_box_in_its_class_colour():
    images = np.full((3, 100, 100, 3), 255, np.uint8)
    boxes = np.zeros((3, 4, 4), np.float32)
    labels = np.zeros((3, 4), np.int64)
    boxes[1, 0], labels[1, 0] = [0.2, 0.3, 0.6, 0.9], 2  # image 1, class 2, pixels x 20-60, y 30-90
    grid = batch_grid(images, boxes, labels, ["circle", "square"], columns=2)
    assert grid.shape == (200, 200, 3)  # 3 tiles in 2 columns: one empty tile
    tile = grid[0:100, 100:200]
    assert tuple(tile[60, 20]) == class_color(2)  # the box's left edge, below the name label
    assert (grid[0:100, 0:100] == 255).all()  # image 0 has no boxes: untouched
