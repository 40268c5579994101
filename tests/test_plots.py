"""The run's pictures: log.jsonl read as the run meant it, results.png, the PR plot and the confusion matrix
written as images, the batch grid drawing each box in its class colour where the box is, and the val
pictures and confusion matrix of an evaluation (in a training run, too)."""

import errno
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ssdfast.data import build_loader
from ssdfast.defaults import DISPLAY_POLICY
from ssdfast.machinery import outputs
from ssdfast.models import build_model
from ssdfast.training import pictures
from ssdfast.training.plots import batch_grid, plot_confusion, plot_precision_recall, plot_run, read_log
from ssdfast.visualize import class_color


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


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


def test_lines_that_are_not_records_are_passed_over(tmp_path):
    """A line torn by a kill in the middle of its write, or lines a user left in the folder (not JSON, JSON
    that is no record, nested deeper than Python's stack): the records around them are read as without."""
    path = write_log(tmp_path / "log.jsonl")
    clean = read_log(path)
    lines = path.read_text().splitlines()
    junk = ['{"epoch": 0, "iteration": 1, "lo', "not json", "[1, 2]", '{"epoch": "x"}', "[" * 100_000, ""]
    path.write_text("\n".join([junk[0], *lines[:3], *junk[1:], *lines[3:]]) + '\n{"epoch": 2, "iter')
    assert read_log(path) == clean


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


def test_batch_grid_writes_detection_scores():
    """Detections (scores given) carry 'name score' labels: a wider label box than the name alone."""
    images = np.full((1, 100, 100, 3), 255, np.uint8)
    boxes, labels = np.array([[[0.1, 0.5, 0.4, 0.9]]], np.float32), np.array([[1]])
    truth = batch_grid(images, boxes, labels, ["a"], columns=1)
    detected = batch_grid(images, boxes, labels, ["a"], columns=1, scores=np.array([[0.87]]))
    painted = [(grid != 255).any(axis=2).sum() for grid in (truth, detected)]
    assert painted[1] > painted[0]


@pytest.mark.parametrize("classes", [3, 25])
def test_the_confusion_matrix_is_an_image(tmp_path, classes):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 9, size=(classes + 1, classes + 1))
    counts[-1, -1] = 0
    names = [f"class{i}" for i in range(classes)]
    image = cv2.imread(str(plot_confusion(counts, names, tmp_path / "confusion_matrix.png", "IoU 0.5")))
    assert image is not None and image.std() > 10
    assert image.shape[0] < 1300  # 25 classes: 20 shown (the figure grows with the classes shown)


def drawn(synthetic_coco, folder):
    """The val pictures of an untrained SSDLite on the synthetic val set (4 images a batch), with COCO
    results that are the ground truth itself (score 0.9), one detection of a circle where there is
    nothing, and one below the display threshold -> (the val annotations, the RGB grid for TensorBoard)."""
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3).eval()
    loader = build_loader(synthetic_coco, "val", train=False, batch_size=4, num_workers=0)
    shown = pictures.ValidationPictures(folder, loader.info)
    for batch in loader:  # as the evaluation loop calls it: the first batch is kept
        shown(batch)
    annotations = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in annotations["annotations"]
    ]
    first = annotations["annotations"][0]
    results += [
        {"image_id": first["image_id"], "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.8},  # nothing there
        {**results[0], "category_id": 7, "score": DISPLAY_POLICY.score_threshold},  # not above the threshold
    ]
    grid = shown.save(model, "cpu", results, [image["id"] for image in annotations["images"]])
    return annotations, grid


def test_an_evaluation_draws_its_val_pictures_and_confusion_matrix(synthetic_coco, tmp_path):
    """val_batch0_labels.jpg and val_batch0_pred.jpg: a row of 4 tiles of 300 px, readable by PIL, the
    ground truth and the detections of the same images; confusion_matrix.png an image and its counts in
    confusion_matrix.json: every object found as its class, and the one false circle."""
    annotations, grid = drawn(synthetic_coco, tmp_path)
    assert grid.shape == (300, 4 * 300, 3) and grid.dtype == np.uint8  # for TensorBoard: RGB
    check_val_pictures(tmp_path)
    labels = cv2.imread(str(tmp_path / "val_batch0_labels.jpg")).astype(int)
    predictions = cv2.imread(str(tmp_path / "val_batch0_pred.jpg")).astype(int)
    assert np.abs(labels - predictions).mean() > 1  # ground truth and detections differ
    record = json.loads((tmp_path / "confusion_matrix.json").read_text())
    categories = sorted(annotations["categories"], key=lambda c: c["id"])
    assert record["classes"] == [c["name"] for c in categories] + ["background"]
    assert (record["iou_threshold"], record["score_threshold"]) == (0.5, DISPLAY_POLICY.score_threshold)
    expected = np.zeros((4, 4), dtype=np.int64)
    for a in annotations["annotations"]:
        k = [c["id"] for c in categories].index(a["category_id"])
        expected[k, k] += 1
    expected[3, 0] = 1  # the circle where there is nothing
    np.testing.assert_array_equal(record["counts"], expected)


def check_val_pictures(folder):
    """val_batch0_labels.jpg and val_batch0_pred.jpg: a row of 4 tiles of 300 px; confusion_matrix.png
    and .json: all readable (PIL, json)."""
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg", "confusion_matrix.png"):
        with Image.open(folder / name) as image:
            image.load()
            if name.endswith(".jpg"):
                assert image.size == (4 * 300, 300), name
    return json.loads((folder / "confusion_matrix.json").read_text())


def test_a_val_picture_that_cannot_be_written_is_one_warning_each(synthetic_coco, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pictures, "_FAILED", set())
    monkeypatch.setattr(outputs.tempfile, "mkstemp", no_space)  # the disk is full from the first byte
    drawn(synthetic_coco, tmp_path)
    drawn(synthetic_coco, tmp_path)  # the next evaluation: no second warning
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("no space left" in line and "training goes on" in line for line in err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_training_run_writes_its_val_pictures_beside_train_batch0(trained_run, synthetic_coco):
    """tools/train.py (2 epochs, evaluated): the val pictures beside train_batch0.jpg, and every val object
    counted once in the confusion matrix's true rows."""
    folder, _ = trained_run
    with Image.open(folder / "train_batch0.jpg") as image:
        assert image.size == (4 * 300, 300)  # batch 4: one row
    counts = np.array(check_val_pictures(folder)["counts"])
    annotations = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    assert counts.shape == (4, 4) and counts[:-1].sum() == len(annotations["annotations"]) and counts[-1, -1] == 0
