"""Other dataset formats (Pascal VOC, YOLO, explicit COCO paths) read into the same checked COCO data.

The oracle is the COCO path: the session's synthetic COCO set is converted here to VOC XML and to
YOLO txt (each format's own convention), and every box, label and image must arrive as the COCO file
gives them. Hand-built small sets cover the bad input each format has; voc_eval is checked against a
hand-computed case.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tool, train_args
from PIL import Image

from ssdfast.data import build_loader
from ssdfast.data.coco import CocoDetection, images_summary, read_image
from ssdfast.data.formats import detect_format, resolve_source
from ssdfast.data.voc import VOC_CLASSES, read_voc
from ssdfast.data.yolo import image_size, read_yolo
from ssdfast.evaluation.voc_eval import voc_map


def coco_split(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def voc_xml(file_name, width, height, objects) -> str:
    """objects: (name, xmin, ymin, xmax, ymax, difficult) in VOC's 1-based inclusive pixel indices."""
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if width else ""
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    return f"<annotation><filename>{file_name}</filename>{size}{body}</annotation>"


def write_voc_from_coco(coco_root: Path, voc_root: Path) -> Path:
    """The COCO set as a VOC year folder: bbox [x, y, w, h] -> xmin x + 1, xmax x + w (1-based inclusive)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc_root / folder).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        data = coco_split(coco_root, split)
        name_of = {c["id"]: c["name"] for c in data["categories"]}
        stems = []
        for img in data["images"]:
            stem = Path(img["file_name"]).stem
            shutil.copy(coco_root / f"{split}2017" / img["file_name"], voc_root / "JPEGImages" / img["file_name"])
            objects = [
                (
                    name_of[a["category_id"]],
                    a["bbox"][0] + 1,
                    a["bbox"][1] + 1,
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                    0,
                )
                for a in data["annotations"]
                if a["image_id"] == img["id"]
            ]
            (voc_root / "Annotations" / f"{stem}.xml").write_text(
                voc_xml(img["file_name"], img["width"], img["height"], objects)
            )
            stems.append(stem)
        (voc_root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return voc_root


def write_yolo_from_coco(coco_root: Path, yolo_root: Path, dict_names: bool = False) -> Path:
    """The COCO set in the Ultralytics layout: class = index in category-id order, normalised cx cy w h."""
    for split in ("train", "val"):
        data = coco_split(coco_root, split)
        index_of = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
        (yolo_root / "images" / split).mkdir(parents=True, exist_ok=True)
        (yolo_root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for img in data["images"]:
            shutil.copy(coco_root / f"{split}2017" / img["file_name"], yolo_root / "images" / split / img["file_name"])
            lines = [
                f"{index_of[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / img['width']!r} "
                f"{(a['bbox'][1] + a['bbox'][3] / 2) / img['height']!r} {a['bbox'][2] / img['width']!r} "
                f"{a['bbox'][3] / img['height']!r}"
                for a in data["annotations"]
                if a["image_id"] == img["id"]
            ]
            (yolo_root / "labels" / split / f"{Path(img['file_name']).stem}.txt").write_text("\n".join(lines))
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    names_yaml = (
        "\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)) if dict_names else f"[{', '.join(names)}]\n"
    )
    (yolo_root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names_yaml}")
    return yolo_root


@pytest.fixture(scope="module")
def voc_set(synthetic_coco, tmp_path_factory):
    return write_voc_from_coco(synthetic_coco, tmp_path_factory.mktemp("voc") / "VOCdevkit" / "VOC2007")


@pytest.fixture(scope="module")
def yolo_set(synthetic_coco, tmp_path_factory):
    return write_yolo_from_coco(synthetic_coco, tmp_path_factory.mktemp("yolo"))


def assert_same_records(expected: CocoDetection, got: CocoDetection):
    """Same images (by file name), same boxes (normalised xyxy) and labels, same category names."""
    assert got.category_names == expected.category_names
    by_name = {Path(r.file_name).name: r for r in got.records}
    assert sorted(by_name) == sorted(Path(r.file_name).name for r in expected.records)
    for want in expected.records:
        have = by_name[Path(want.file_name).name]
        assert (have.width, have.height) == (want.width, want.height)
        np.testing.assert_allclose(have.boxes, want.boxes, rtol=0, atol=1e-6)
        assert have.labels.tolist() == want.labels.tolist()


# ------------------------------------------------------------------ the same data through every format
@pytest.mark.parametrize("split", ["train", "val"])
def test_voc_gives_the_boxes_of_the_equivalent_coco_file(synthetic_coco, voc_set, split):
    expected = CocoDetection(synthetic_coco, split, train=False)
    got = CocoDetection(split=split, train=False, source=resolve_source(voc_set.parent, split))  # VOCdevkit/
    assert got.data_format == "voc"
    assert_same_records(expected, got)
    assert torch.equal(got[0]["image"], expected[0]["image"])  # the same pixels


@pytest.mark.parametrize("dict_names", [False, True])
def test_yolo_gives_the_boxes_of_the_equivalent_coco_file(synthetic_coco, tmp_path, dict_names):
    yolo = write_yolo_from_coco(synthetic_coco, tmp_path / "yolo", dict_names=dict_names)
    for split in ("train", "val"):
        got = CocoDetection(split=split, train=False, source=resolve_source(yolo / "data.yaml", split))
        assert got.data_format == "yolo" and got.image_dir == yolo
        assert_same_records(CocoDetection(synthetic_coco, split, train=False), got)


def test_explicit_coco_paths_read_what_the_layout_reads(synthetic_coco):
    source = resolve_source(
        None,
        "val",
        ann_file=synthetic_coco / "annotations" / "instances_val2017.json",
        image_dir=synthetic_coco / "val2017",
    )
    assert_same_records(CocoDetection(synthetic_coco, "val"), CocoDetection(split="val", source=source))
    with pytest.raises(ValueError, match="explicit annotation file needs its image folder"):
        resolve_source(synthetic_coco, "val", ann_file=synthetic_coco / "annotations" / "instances_val2017.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        resolve_source(None, "val", ann_file=synthetic_coco / "nowhere.json", image_dir=synthetic_coco / "val2017")


def test_the_format_is_detected_and_nothing_found_is_a_named_error(synthetic_coco, voc_set, yolo_set, tmp_path):
    assert detect_format(synthetic_coco) == "coco"
    assert detect_format(voc_set) == detect_format(voc_set.parent) == "voc"
    assert detect_format(yolo_set) == detect_format(yolo_set / "data.yaml") == "yolo"
    with pytest.raises(FileNotFoundError) as error:
        resolve_source(tmp_path, "train")
    for looked_for in ("annotations/instances_", "Annotations/ and ImageSets/Main/", "data.yaml", str(tmp_path)):
        assert looked_for in str(error.value)


def test_voc_and_yolo_reach_the_loader_and_dali_as_coco(synthetic_coco, voc_set, yolo_set):
    """build_loader on each format; the DALI path (CPU mode) reads the same images as the PyTorch path."""
    pytest.importorskip("nvidia.dali")
    for data in (voc_set, yolo_set):
        ids = {}
        for dali in (False, True):
            loader = build_loader(
                data, "val", train=False, batch_size=4, num_workers=1, backend="dali" if dali else "pytorch"
            )
            ids[dali] = sorted(i for batch in loader for i in batch.image_ids.tolist())
            assert loader.info.category_names == ("circle", "square", "triangle")
        assert ids[False] == ids[True] == list(range(1, 9))


# ------------------------------------------------------------------ VOC: its conventions and bad input
def write_image(path: Path, width: int, height: int, exif_orientation: int | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (90, 140, 200))
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    image.save(path, exif=exif)


def small_voc(root: Path, annotations: dict[str, str], split_ids: list[str]) -> Path:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem, xml in annotations.items():
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
        write_image(root / "JPEGImages" / f"{stem}.jpg", 100, 50)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(split_ids) + "\n")
    return root


def test_voc_pixel_convention_difficult_and_size_from_the_image(tmp_path):
    voc = small_voc(
        tmp_path,
        {
            "a": voc_xml("a.jpg", 100, 50, [("dog", 1, 1, 10, 20, 0), ("cat", 11, 5, 30, 40, 1)]),
            "b": voc_xml("b.jpg", 0, 0, [("dog", 51, 26, 100, 50, 0)]),
        },
        ["a", "b"],
    )
    source = read_voc(voc, "train")
    assert [c["name"] for c in source.annotations["categories"]] == list(VOC_CLASSES)  # all VOC names: VOC's 20
    boxes = {(a["image_id"], a["category_id"]): (a["bbox"], a["iscrowd"]) for a in source.annotations["annotations"]}
    dog, cat = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1
    assert boxes[(1, dog)] == ([0, 0, 10, 20], 0)  # pixels 1..10 cover [0, 10) in continuous coordinates
    assert boxes[(1, cat)] == ([10, 4, 20, 36], 1)  # difficult: kept as an ignored (crowd) box
    assert boxes[(2, dog)] == ([50, 25, 50, 25], 0)
    assert source.annotations["images"][1]["width"] == 100 and source.annotations["images"][1]["height"] == 50
    data = CocoDetection(split="train", source=source)
    assert data.dropped["crowd boxes (VOC: difficult objects)"] == 1  # not trained on, counted
    np.testing.assert_allclose(data.records[1].boxes, [[0.5, 0.5, 1.0, 1.0]])


def test_voc_bad_xml_missing_files_and_unknown_names_are_dropped_and_counted(tmp_path):
    voc = small_voc(
        tmp_path,
        {
            "good": voc_xml("good.jpg", 100, 50, [("widget", 1, 1, 50, 40, 0), ("dog", 2, 2, 20, 20, 0)]),
            "broken": "<annotation><object>",
            "other": "<html></html>",
            "nobox": voc_xml("nobox.jpg", 100, 50, [("dog", 1, 1, "x", 9, 0)]),
        },
        ["good", "broken", "other", "nobox", "gone"],
    )
    with pytest.warns(UserWarning) as warned:
        data = CocoDetection(split="train", source=read_voc(voc, "train"))
    assert data.category_names == ["dog", "widget"]  # a name outside VOC's 20: the sorted names found
    assert [r.file_name for r in data.records] == ["good.jpg"] and data.records[0].labels.tolist() == [2, 1]
    message = " ".join(str(w.message) for w in warned)
    assert "2 VOC annotation files that cannot be read (ids broken.xml" in message and "other.xml" in message
    assert "1 listed images without an XML file in Annotations/ (ids gone)" in message
    assert "1 VOC objects without a name or 4 numeric bndbox coordinates (ids nobox)" in message


# ------------------------------------------------------------------ YOLO: its conventions and bad input
def small_yolo(root: Path, labels: dict[str, str | None], yaml_text: str) -> Path:
    for stem, text in labels.items():
        write_image(root / "images" / "train" / f"{stem}.jpg", 200, 100)
        if text is not None:
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml_text)
    return root


def test_yolo_bad_lines_missing_labels_and_boxes_outside_are_dropped_and_counted(tmp_path):
    yolo = small_yolo(
        tmp_path,
        {
            "a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.5 0.1 0.2\n\n0 0.5 0.5\nx 0.5 0.5 0.1 0.1\n"
            "5 0.5 0.5 0.1 0.1\n0.5 0.5 0.5 0.1 0.1\n",
            "b": "0 1.5 1.5 0.2 0.2\n",
            "c": None,
        },
        "train: images/train\nval: images/train\nnames: {0: person, 1: car}\n",
    )
    with pytest.warns(UserWarning) as warned:
        source = read_yolo(yolo, "train")
        evaluation = CocoDetection(split="train", train=False, source=source)
    message = " ".join(str(w.message) for w in warned)
    assert "3 YOLO label lines that are not 'class cx cy w h' (ids images/train/a.jpg:4, " in message
    assert "1 YOLO boxes of a class not in names (ids images/train/a.jpg:6)" in message
    assert evaluation.category_names == ["person", "car"]
    by_name = {r.file_name: r for r in evaluation.records}
    assert sorted(by_name) == ["images/train/a.jpg", "images/train/b.jpg", "images/train/c.jpg"]  # c: no label file
    np.testing.assert_allclose(
        by_name["images/train/a.jpg"].boxes, [[0.25, 0.25, 0.75, 0.75], [0.2, 0.4, 0.3, 0.6]], atol=1e-6
    )
    assert by_name["images/train/a.jpg"].labels.tolist() == [1, 2]
    assert len(by_name["images/train/b.jpg"].boxes) == 0 and len(by_name["images/train/c.jpg"].boxes) == 0
    assert evaluation.dropped["degenerate boxes (no area inside the image)"] == 1  # b's box lies outside
    training = CocoDetection(split="train", source=read_yolo(yolo, "train"))
    assert [r.file_name for r in training.records] == ["images/train/a.jpg"]
    assert training.dropped["training images without a usable box"] == 2


def test_yolo_paths_stay_inside_the_dataset_folder(tmp_path):
    outside = tmp_path / "elsewhere" / "images"
    write_image(outside / "x.jpg", 20, 20)
    yolo = small_yolo(
        tmp_path / "set",
        {"a": "0 0.5 0.5 0.2 0.2\n"},
        "train: ../elsewhere/images\nval: ../images/train\nnames: [thing]\n",
    )
    with pytest.raises(ValueError, match="lies outside"):
        read_yolo(yolo, "train")
    assert len(read_yolo(yolo, "val").annotations["images"]) == 1  # Roboflow's "../x" read as "x", as Ultralytics
    (yolo / "train.txt").write_text(f"./images/train/a.jpg\n{outside / 'x.jpg'}\n../elsewhere/images/x.jpg\n")
    (yolo / "data.yaml").write_text("train: train.txt\nval: images/train\nnames: [thing]\n")
    source = read_yolo(yolo, "train")
    assert [i["file_name"] for i in source.annotations["images"]] == ["images/train/a.jpg"]
    assert len(source.found.dropped["listed images outside the dataset folder"]) == 2
    (yolo / "data.yaml").write_text("train: images/train\nval: images/train\nnames: thing\n")
    with pytest.raises(ValueError, match="'names' must be"):
        read_yolo(yolo, "train")
    (yolo / "data.yaml").write_text("train: images/train\nnames: [thing]\n")
    with pytest.raises(ValueError, match="no 'val:' entry"):
        read_yolo(yolo, "val")


def test_yolo_image_size_follows_exif_rotation_as_the_decoder_does(tmp_path):
    write_image(tmp_path / "r.jpg", 40, 20, exif_orientation=6)  # stored 40x20, shown rotated: 20x40
    height, width = read_image(tmp_path / "r.jpg").shape[:2]  # OpenCV decodes with the rotation applied
    assert image_size(tmp_path / "r.jpg") == (width, height) == (20, 40)


# ------------------------------------------------------------------ VOC mAP, by hand
class Truth:
    """Just what voc_map reads of a pycocotools COCO object."""

    def __init__(self, anns, cats):
        self.cats = {c["id"]: c for c in cats}
        self.imgToAnns = {}
        for a in anns:
            self.imgToAnns.setdefault(a["image_id"], []).append(a)

    def getImgIds(self):
        return [1, 2]


def test_voc_ap_of_a_hand_computed_case():
    """Class A: 2 boxes to find + 1 difficult. Detections by score: TP, FP (duplicate), TP, ignored
    (on the difficult box), FP (other image). Recall .5 .5 1 1 1, precision 1 .5 .667 .667 .5.
    VOC12 (envelope 1 up to recall .5, then .667): .5 * 1 + .5 * 2/3 = 0.8333.
    VOC07: recall >= 0..0.5 (6 points) best 1; 0.6..1.0 (5 points) best 2/3: (6 + 10/3) / 11 = 0.8485.
    Class B: its only box found by the second of two detections: precision .5 at recall 1 -> 0.5 both."""
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "iscrowd": 0},
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "iscrowd": 1},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
    ]
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.9},  # IoU .9: TP
        {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8},  # the same box again: FP
        {"image_id": 1, "category_id": 1, "bbox": [21, 21, 10, 10], "score": 0.7},  # IoU .68: TP
        {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.6},  # difficult: ignored
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},  # no A there: FP
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "score": 0.9},  # IoU 1/7: FP
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.4},
    ]  # TP
    out = voc_map(Truth(anns, [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}, {"id": 3, "name": "C"}]), results)
    assert out["per_class"]["A"]["VOC12"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert out["per_class"]["A"]["VOC07"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert out["per_class"]["B"] == pytest.approx({"VOC07": 0.5, "VOC12": 0.5})
    assert "C" not in out["per_class"]  # no box to find: not in the mean
    assert out["VOC12"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 2)


def without_boxes(synthetic_coco: Path, folder: Path, emptied: int) -> Path:
    """A copy of the synthetic set whose first `emptied` train images lost their boxes (one keeps only a
    crowd box: no usable box either)."""
    shutil.copytree(synthetic_coco, folder)
    path = folder / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    gone = {image["id"] for image in data["images"][:emptied]}
    crowd = next(a for a in data["annotations"] if a["image_id"] == min(gone))
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in gone] + [{**crowd, "iscrowd": 1}]
    path.write_text(json.dumps(data))
    return folder


def test_the_summary_counts_the_training_images_without_a_box(synthetic_coco, tmp_path):
    data = without_boxes(synthetic_coco, tmp_path / "set", emptied=3)
    total = len(coco_split(data, "train")["images"])
    training = CocoDetection(data, "train")
    assert len(training) == total - 3
    assert (
        images_summary(len(training), training.dropped) == f"{total - 3} train images (3 without a usable box left out)"
    )
    evaluation = CocoDetection(data, "train", train=False)  # evaluation keeps every image
    assert images_summary(len(evaluation), evaluation.dropped) == f"{total} train images"
    assert images_summary(1, {}, "val") == "1 val image"


@pytest.mark.slow
def test_a_training_run_says_how_many_images_had_no_box(synthetic_coco, tmp_path):
    data = without_boxes(synthetic_coco, tmp_path / "set", emptied=2)
    total = len(coco_split(data, "train")["images"])
    flags = train_args(data, tmp_path / "run", 1, "--iters-per-epoch", 1, "--eval-every", 0)
    printed = tool("train", *flags).stdout
    assert f", {total - 2} train images (2 without a usable box left out), " in printed


# ------------------------------------------------------------------ end to end, through the tools
def detections_and_ap(detections_file: Path, categories: list[dict]) -> tuple[list, float]:
    """The detections by category name without image ids (the formats number both their own way), and the AP."""
    name_of = {c["id"]: c["name"] for c in categories}
    found = sorted(
        (name_of[d["category_id"]], *np.round(d["bbox"], 3).tolist(), round(d["score"], 5))
        for d in json.loads(detections_file.read_text())
    )
    return found, json.loads(detections_file.with_name(detections_file.stem + ".metrics.json").read_text())["AP"]


@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["voc", "yolo"])
def test_train_and_evaluate_on_voc_and_yolo_sets(synthetic_coco, voc_set, yolo_set, tmp_path, data_format):
    data = voc_set if data_format == "voc" else yolo_set / "data.yaml"
    tool("train", *train_args(data, tmp_path, 1, "--iters-per-epoch", 2, "--eval-batches", 1))
    evaluate = (
        "--weights",
        tmp_path / "last.pt",
        "--max-batches",
        1,
        "--batch-size",
        4,
        "--num-workers",
        0,
        "--device",
        "cpu",
        "--score-threshold",
        0.01,
    )
    printed = tool("eval", "--data-path", data, *evaluate, "--output", tmp_path / "dets.json").stdout
    assert ("VOC07 (11-point)" in printed and "VOC12 (all-point)" in printed) == (data_format == "voc")
    assert ("voc_map50" in json.loads((tmp_path / "dets.metrics.json").read_text())) == (data_format == "voc")
    # The same model on the same images through the COCO file (explicit paths): the same detections and AP.
    tool(
        "eval",
        "--ann",
        synthetic_coco / "annotations" / "instances_val2017.json",
        "--images",
        synthetic_coco / "val2017",
        *evaluate,
        "--output",
        tmp_path / "coco.json",
    )
    coco_detections, coco_ap = detections_and_ap(
        tmp_path / "coco.json", coco_split(synthetic_coco, "val")["categories"]
    )
    detections, ap = detections_and_ap(tmp_path / "dets.json", resolve_source(data, "val").annotations["categories"])
    assert detections == coco_detections and len(detections) > 0 and ap == pytest.approx(coco_ap, abs=1e-9)
