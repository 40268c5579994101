"""Bad input never gives a wrong result, a raw traceback, or lost output (every file written here)."""

import json
import os
import shutil
import stat

import cv2
import numpy as np
import pytest
import torch
from conftest import tool, train_args

from ssdfast import ops, reference
from ssdfast.data import CocoDetection, Collate
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.models import build_model


def copy_dataset(src, dst, edit=None):
    """A copy of a COCO-layout dataset; edit(split, data) may change each annotation dict in place."""
    shutil.copytree(src, dst)
    for split in ("train", "val"):
        path = dst / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        if edit:
            edit(split, data)
        path.write_text(json.dumps(data))
    return dst


def fake_weights(path, category_names, model="ssdlite300_mobilenetv2"):
    """An ssdfast checkpoint trained on `category_names` (random weights: only the metadata matters)."""
    net = build_model(model, num_classes=len(category_names), backbone_weights="none")
    save_checkpoint(
        path,
        {
            "model": net.state_dict(),
            "model_name": model,
            "num_classes": len(category_names),
            "category_names": list(category_names),
            "category_ids": list(range(1, 1 + len(category_names))),
            "epoch": 0,
        },
    )
    return path


def names_of(root):
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


# ---------------------------------------------------------------- 1, 8: outputs never overwrite each other
@pytest.mark.slow
def test_eval_outputs_are_distinct_and_folders_are_created(synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    out = tmp_path / "new" / "folder" / "results.json"  # the folder does not exist yet
    result = tool("eval", "--data-path", synthetic_coco, "--weights", weights, "--num-workers", 0, "--output", out)
    assert isinstance(json.loads(out.read_text()), list)  # the detections, not the metrics
    metrics = json.loads((out.parent / "results.metrics.json").read_text())
    assert "AP" in metrics and str(out) in result.stdout


@pytest.mark.slow
def test_detect_never_overwrites_one_drawing_with_another(synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    image = sorted((synthetic_coco / "val2017").glob("*.jpg"))[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(image, inputs / "a.jpg")
    cv2.imwrite(str(inputs / "a.png"), cv2.imread(str(image)))
    tool("detect", "--weights", weights, "--input", inputs, "--output", tmp_path / "out")
    written = ["a.jpg", "a.png", "detections.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".ssdfast-outputs.jsonl", *written]  # + the ledger
    # One image into a folder (trailing slash, folder not there yet): drawn inside it, under its own name.
    tool("detect", "--weights", weights, "--input", inputs / "a.jpg", "--output", f"{tmp_path / 'single'}/")
    assert (tmp_path / "single" / "a.jpg").is_file() and (tmp_path / "single" / "detections.json").is_file()
    clash = tool("detect", "--weights", weights, "--input", inputs / "a.jpg", "--output", inputs / "a.jpg", check=False)
    assert clash.returncode == 1 and "overwrite the input" in clash.stderr and "Traceback" not in clash.stderr


# ---------------------------------------------------------------- 2: no usable training data
@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage,reason",
    [
        ("missing_images", "missing image files"),
        ("all_crowd", "crowd boxes"),
        ("unknown_category", "category_id not in categories"),
    ],
)
def test_training_without_usable_images_is_an_error_with_counts(synthetic_coco, tmp_path, breakage, reason):
    def edit(split, data):
        if split != "train":
            return
        for ann in data["annotations"]:
            if breakage == "all_crowd":
                ann["iscrowd"] = 1
            if breakage == "unknown_category":
                ann["category_id"] = 999

    root = copy_dataset(synthetic_coco, tmp_path / "data", edit)
    if breakage == "missing_images":
        for p in (root / "train2017").iterdir():
            p.unlink()
    result = tool("train", *train_args(root, tmp_path / "run", 1), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: no usable train images" in result.stderr and reason in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- 3: category identity
def swap_names(split, data):
    names = [c["name"] for c in data["categories"]]
    for cat, name in zip(data["categories"], names[1:] + names[:1]):  # same count, other meanings
        cat["name"] = name


@pytest.mark.slow
def test_eval_refuses_weights_of_other_categories(synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    other = copy_dataset(synthetic_coco, tmp_path / "other", swap_names)
    refused = tool("eval", "--data-path", other, "--weights", weights, "--num-workers", 0, check=False)
    assert refused.returncode == 1 and "trained on other categories" in refused.stderr
    assert f"label 1: '{names_of(synthetic_coco)[0]}' in the weights" in refused.stderr
    assert not (tmp_path / "detections_val.json").exists()
    tool("eval", "--data-path", other, "--weights", weights, "--num-workers", 0, "--ignore-category-names")


@pytest.mark.slow
def test_resume_refuses_a_dataset_with_other_categories(trained_run, synthetic_coco, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((trained_run[0] / "last.pt").read_bytes())  # 2 epochs on synthetic_coco
    before = (run / "last.pt").read_bytes()
    other = copy_dataset(synthetic_coco, tmp_path / "other", swap_names)
    refused = tool("train", *train_args(other, run, 3, "--iters-per-epoch", 1, "--eval-every", 0), check=False)
    assert refused.returncode == 1 and "trained on other categories" in refused.stderr
    assert "Traceback" not in refused.stderr and (run / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- 4, 10: one behaviour on every backend
def outcome(fn):
    try:
        return "ok", fn()
    except RuntimeError as error:
        return "error", str(error).split("\n")[0]


DEGENERATE = {
    "zero anchors": lambda m: m.match_encode(
        torch.rand(2, 3, 4), torch.ones(2, 3, dtype=torch.long), torch.zeros(0, 4)
    ),
    "zero anchors (match)": lambda m: m.match(
        torch.rand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(0, 4)
    ),
    "zero ground truth": lambda m: m.match_encode(
        torch.rand(2, 0, 4), torch.ones(2, 0, dtype=torch.long), torch.rand(5, 4)
    ),
    "zero images": lambda m: m.match_encode(torch.rand(0, 3, 4), torch.ones(0, 3, dtype=torch.long), torch.rand(5, 4)),
    "decode zero anchors": lambda m: m.box_decode(torch.rand(2, 0, 4), torch.zeros(0, 4)),
    "iou zero boxes": lambda m: m.box_iou(torch.zeros(0, 4), torch.rand(3, 4)),
    "nms K = 0": lambda m: m.batched_nms_padded(
        torch.rand(2, 5, 4), torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), 0.5, 0.0, 0
    ),
    "nms zero images": lambda m: m.batched_nms_padded(
        torch.rand(0, 5, 4), torch.rand(0, 5), torch.zeros(0, 5, dtype=torch.long), 0.5, 0.0, 3
    ),
    "nms zero candidates": lambda m: m.nms(torch.zeros(0, 4), torch.zeros(0), 0.5),
    "integer boxes (iou)": lambda m: m.box_iou(torch.ones(3, 4, dtype=torch.long), torch.rand(3, 4)),
    "integer boxes (nms)": lambda m: m.nms(torch.ones(3, 4, dtype=torch.long), torch.rand(3), 0.5),
    "integer ground truth": lambda m: m.match_encode(
        torch.ones(1, 2, 4, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), torch.rand(5, 4)
    ),
}


@pytest.mark.skipif(
    ops.backend("cpu") != "compiled",
    reason="compares ssdfast._C with the twins: only without the extension (CI always builds it)",
)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_sizes_and_dtypes_same_on_compiled_and_reference(case):
    """Each op, each degenerate size: the same error, or the same well-formed (empty) output, from the
    compiled kernel and the pure-PyTorch twin; never a crash (zero anchors once segfaulted)."""
    got, want = outcome(lambda: DEGENERATE[case](ops)), outcome(lambda: DEGENERATE[case](reference))
    assert got[0] == want[0], (got, want)
    if got[0] == "error":  # the same message (C++ spells dtypes "Long", Python "torch.int64")
        assert got[1].split(", got")[0] == want[1].split(", got")[0]
    else:
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (got[1], want[1]))):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


# ---------------------------------------------------------------- 5: annotation files, field by field
def valid_file():
    return {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "2.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 3, "bbox": [8, 8, 20, 10], "area": 200, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "thing"}],
    }


BAD_VALUES = {
    "missing": ...,
    "string": "x",
    "null": None,
    "negative": -5,
    "zero": 0,
    "list": [1],
    "bool": True,
    "nan": float("nan"),
    "infinity": float("inf"),
    "huge": 10**30,  # overflows an int64 tensor
    "long": "x" * 300,  # as a file_name: longer than the file system allows
}


def broken_files():
    """(name, annotation dict): every field of every record type missing, wrong-typed or out of range,
    plus broken top-level keys."""
    for key in ("images", "annotations", "categories"):
        data = valid_file()
        del data[key]
        yield f"no {key}", data
        data = valid_file()
        data[key] = {"not": "a list"}
        yield f"{key} not a list", data
    for record_type, index in (("images", 0), ("annotations", 0), ("categories", 0)):
        for field_name in valid_file()[record_type][index]:
            for label, value in BAD_VALUES.items():
                data = valid_file()
                record = data[record_type][index]
                if value is ...:
                    del record[field_name]
                else:
                    record[field_name] = value
                yield f"{record_type}.{field_name} {label}", data
    for bbox in ([1, 2, 3], [1, 2, "3", 4], [1, 2, float("inf"), 4], "1,2,3,4"):
        data = valid_file()
        data["annotations"][0]["bbox"] = bbox
        yield f"bbox {bbox!r}", data


def test_every_broken_annotation_field_is_a_named_error_or_a_counted_drop(tmp_path):
    for i, (name, data) in enumerate(broken_files()):
        root = tmp_path / str(i)
        (root / "annotations").mkdir(parents=True)
        (root / "val2017").mkdir()
        for n in (1, 2):
            cv2.imwrite(str(root / "val2017" / f"{n}.jpg"), np.full((48, 64, 3), 90, np.uint8))
        ann_file = root / "annotations" / "instances_val2017.json"
        ann_file.write_text(json.dumps(data))
        try:
            dataset = CocoDetection(root, "val")
        except ValueError as error:  # a named error: the file, and the record or field
            assert str(ann_file) in str(error) or str(root) in str(error), (name, error)
            continue
        except Exception as error:  # anything else is a bug: a traceback for the user
            pytest.fail(f"{name}: {type(error).__name__}: {error}")
        # Loaded: what is left must be exactly the valid file minus counted drops (or a counted repair).
        kept_boxes = sum(len(r.boxes) for r in dataset.records)
        counted = sum(dataset.dropped.values()) + sum(map(len, dataset.coco.validation.repaired.values()))
        changed = kept_boxes != 2 or len(dataset.records) != 2
        assert not changed or counted > 0, f"{name}: silently changed ({kept_boxes} boxes, {dataset.dropped})"
        try:  # and what was kept can be read and batched (sizes and ids become int64 tensors)
            Collate(keep_batch_size=False)([dataset[i] for i in range(len(dataset))])
        except Exception as error:
            pytest.fail(f"{name}: kept at load, fails when batched: {type(error).__name__}: {error}")


# ---------------------------------------------------------------- 6, 9: one error line, found early
@pytest.mark.slow
def test_train_user_errors_are_one_line_and_found_before_training(synthetic_coco, tmp_path):
    missing = tool("train", *train_args(tmp_path / "nowhere", tmp_path / "run", 1), check=False)
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error:") and "Traceback" not in missing.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    unwritable = tool("train", *train_args(synthetic_coco, blocker / "run", 1), check=False)
    assert unwritable.returncode == 1 and "save folder" in unwritable.stderr and "Traceback" not in unwritable.stderr
    assert "epoch 0" not in unwritable.stdout  # refused before any training
    (synthetic_coco / "annotations" / "instances_val2017.json").read_text()  # the dataset is untouched


# ---------------------------------------------------------------- 7: nothing to evaluate
@pytest.mark.slow
def test_val_set_without_annotations_says_so_and_claims_no_best_checkpoint(synthetic_coco, tmp_path):
    def no_val_annotations(split, data):
        if split == "val":
            data["annotations"] = []

    root = copy_dataset(synthetic_coco, tmp_path / "data", no_val_annotations)
    result = tool("train", *train_args(root, tmp_path / "run", 1, "--iters-per-epoch", 1))
    assert "nothing to evaluate" in result.stdout and "-1.000" not in result.stdout
    assert not (tmp_path / "run" / "best.pt").exists() and "best.pt" not in result.stdout.splitlines()[-1]
    evaluated = tool("eval", "--data-path", root, "--weights", tmp_path / "run" / "last.pt", "--num-workers", 0)
    assert "nothing to evaluate" in evaluated.stdout
    assert "AP" not in json.loads((tmp_path / "run" / "metrics_val.json").read_text())


# ---------------------------------------------------------------- 11: checkpoint permissions
def test_checkpoints_keep_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"x": torch.ones(1)})
        assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o644  # not mkstemp's 0600
    finally:
        os.umask(mask)
