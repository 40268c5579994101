"""The public API (ssdfast.load -> Detector.predict -> Result): every input kind finds what
ssdfast.inference.detect finds on the same pixels read with PIL; boxes clipped to the image; an exported
.onnx behaves as its checkpoint; the README example runs as written.

The detector is an SSDLite with random weights whose BatchNorm statistics were measured on 8 real images
(forward passes only, seconds): its scores then differ from image to image and box to box (with the
initial statistics every box scores the same), so comparisons are not decided by ties; a higher
background bias leaves tens of boxes per image above the default 0.3, some reaching past the border.
"""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ssdfast
from ssdfast.anchors import SSDLITE300
from ssdfast.data import build_loader
from ssdfast.defaults import DetectionPolicy
from ssdfast.detector import Detector
from ssdfast.evaluation.loop import predict as engine_predict
from ssdfast.inference import as_detector, detect, load_detector
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.models import build_model
from ssdfast.visualize import draw_detections

ROOT = Path(__file__).resolve().parent.parent

# The README's "Predict from Python" example, run verbatim by test_readme_example_runs_as_written.
# README's first Python example, run verbatim below.
README_EXAMPLE = re.search(
    r"```python\n(.*?)```", (Path(__file__).resolve().parent.parent / "README.md").read_text(), flags=re.S
).group(1)


@pytest.fixture(scope="module")
def checkpoint(synthetic_coco, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3)
    loader = build_loader(synthetic_coco, "val", train=False, batch_size=8, num_workers=0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batch below
    with torch.no_grad():
        model.train()(next(iter(loader)).to("cpu").images)  # normalised
        for head, boxes_per_location in zip(model.conf, model.anchor_spec.boxes_per_location):
            head[-1].bias[:boxes_per_location] += 3  # background logits: 10-70 boxes above 0.3, not 200
    path = tmp_path_factory.mktemp("api") / "best.pt"
    info = loader.info
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_name": "ssdlite300_mobilenetv2",
            "num_classes": 3,
            "category_ids": info.category_ids,
            "category_names": info.category_names,
            "epoch": 0,
        },
    )
    return path


@pytest.fixture(scope="module")
def folder(synthetic_coco, tmp_path_factory):
    """3 validation images of different sizes as PNG (lossless: every reader sees the same pixels), and a
    text file that is not an image."""
    out = tmp_path_factory.mktemp("images")
    for name, source in zip("abc", sorted((synthetic_coco / "val2017").iterdir())[:3]):
        Image.open(source).save(out / f"{name}.png")
    (out / "notes.txt").write_text("not an image")
    return out


@pytest.fixture(scope="module")
def pil_arrays(folder):
    """The oracle's view of the images: RGB uint8 arrays read by PIL."""
    return [np.asarray(Image.open(folder / f"{name}.png").convert("RGB")) for name in "abc"]


@pytest.fixture(scope="module")
def oracle(checkpoint):
    model, meta = load_detector(checkpoint)
    return lambda arrays: detect(model, arrays), meta["category_names"]


def assert_same(results, expected, arrays, names, paths):
    assert len(results) == len(expected) == len(arrays)
    for result, want, array, path in zip(results, expected, arrays, paths):
        assert len(want["scores"]) > 0  # real detections to compare
        np.testing.assert_allclose(result.boxes, want["boxes"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(result.scores, want["scores"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(result.labels, want["labels"])
        assert result.names == [names[label - 1] for label in want["labels"]]
        assert result.boxes.dtype == np.float32 and result.boxes.shape == (len(want["scores"]), 4)
        np.testing.assert_array_equal(result.image, array)
        assert result.path == path


def test_every_input_kind_finds_what_inference_detect_finds(checkpoint, folder, pil_arrays, oracle):
    detect_arrays, names = oracle
    detector = ssdfast.load(checkpoint, device="cpu")
    files = [folder / f"{name}.png" for name in "abc"]
    expected = detect_arrays(pil_arrays)  # the three images in one batch, as predict batches them
    as_tensor = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in pil_arrays]
    many = {
        "folder": (folder, files),
        "str paths": ([str(f) for f in files], files),
        "PIL images": ([Image.open(f) for f in files], [None] * 3),
        "numpy arrays": (pil_arrays, [None] * 3),
        "uint8 tensors": (as_tensor, [None] * 3),
        "float tensors": ([t / 255 for t in as_tensor], [None] * 3),
    }
    for kind, (source, paths) in many.items():
        print(kind)
        assert_same(detector.predict(source), expected, pil_arrays, names, paths)
    one = detect_arrays(pil_arrays[:1])
    for source, path in (
        (files[0], files[0]),
        (str(files[0]), files[0]),
        (Image.open(files[0]), None),
        (pil_arrays[0], None),
        (as_tensor[0], None),
        (as_tensor[0][None], None),
    ):
        assert_same(detector.predict(source), one, pil_arrays[:1], names, [path])


def test_batches_and_grayscale(checkpoint, folder, pil_arrays, oracle):
    detect_arrays, names = oracle
    detector = ssdfast.load(checkpoint, device="cpu")
    expected = detect_arrays(pil_arrays[:2]) + detect_arrays(pil_arrays[2:])
    assert_same(detector.predict(pil_arrays, batch_size=2), expected, pil_arrays, names, [None] * 3)
    gray = Image.open(folder / "a.png").convert("L")
    as_rgb = np.asarray(gray.convert("RGB"))  # PIL's grayscale -> RGB: the oracle
    for source in (np.asarray(gray), np.asarray(gray)[..., None], gray):
        assert_same(detector.predict(source), detect_arrays([as_rgb]), [as_rgb], names, [None])


@pytest.mark.parametrize(
    "source, error, words",
    [
        (np.zeros((40, 50, 4), np.uint8), ValueError, ["(40, 50, 4)", "alpha"]),
        (np.zeros((3, 40, 50), np.uint8), ValueError, ["(3, 40, 50)", "channels first"]),
        (np.zeros((40, 50, 3), np.float64), TypeError, ["uint8", "float64"]),
        (np.zeros((0, 50, 3), np.uint8), ValueError, ["(0, 50, 3)"]),
        (torch.zeros(40, 50, 3, dtype=torch.uint8), ValueError, ["[3, H, W]", "[40, 50, 3]"]),
        (torch.full((3, 40, 50), 2.0), ValueError, ["[0, 1]"]),
        (torch.zeros(3, 40, 50, dtype=torch.int32), TypeError, ["torch.int32"]),
        ({"image": 1}, TypeError, ["builtins.dict", "RGB uint8 numpy array [H, W, 3]"]),
    ],
)
def test_bad_inputs_get_a_clear_error_naming_what_was_given(checkpoint, source, error, words):
    detector = ssdfast.load(checkpoint, device="cpu")
    with pytest.raises(error) as caught:
        detector.predict(source)
    assert all(word in str(caught.value) for word in words), caught.value


def test_missing_and_unreadable_files_are_named(checkpoint, tmp_path):
    detector = ssdfast.load(checkpoint, device="cpu")
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.jpg"):
        detector.predict(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no images in the folder {tmp_path}")):
        detector.predict(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read the image .*empty.jpg"):
        detector.predict(tmp_path)


class OneBox(nn.Module):
    """Any image -> one class-2 box: anchor (0.25, 0.25, 0.75, 0.75) moved by offsets (-10, 8, 0, 0), i.e.
    centre (0.5 - 10 * 0.1 * 0.5, 0.5 + 8 * 0.1 * 0.5) = (0, 0.9), size 0.5 x 0.5: normalised xyxy
    (-0.25, 0.65, 0.25, 1.15), partly left of and below the image."""

    anchor_spec = SSDLITE300  # what the post-processing reads of it: the box coding, variances (0.1, 0.2)

    def __init__(self):
        super().__init__()
        self.register_buffer("anchors", torch.tensor([[0.25, 0.25, 0.75, 0.75]]))

    def forward(self, images):
        batch = images.shape[0]
        locs = torch.tensor([-10.0, 8.0, 0.0, 0.0]).expand(batch, 1, 4)
        confs = torch.tensor([0.0, 0.0, 10.0, 0.0]).expand(batch, 1, 4)  # softmax: class 2 at 0.9999
        return locs, confs


def test_boxes_are_clipped_to_the_image():
    image = np.zeros((100, 200, 3), np.uint8)  # H 100, W 200: unclipped (-50, 65, 50, 115) pixels
    clipped = [[0.0, 65.0, 50.0, 100.0]]
    np.testing.assert_allclose(detect(OneBox(), [image])[0]["boxes"], clipped, atol=1e-3)
    policy = DetectionPolicy(score_threshold=0.3, nms_threshold=0.45)
    detector = Detector(
        as_detector(OneBox(), policy=policy), {"model_name": "one box", "category_names": ["a", "b", "c"]}
    )
    result = detector.predict(image)[0]
    np.testing.assert_allclose(result.boxes, clipped, atol=1e-3)
    assert result.names == ["b"]
    assert result.to_dict()["detections"][0]["box"] == [0.0, 65.0, 50.0, 100.0]


class FixedScores(nn.Module):
    """Any image -> one anchor whose class probabilities are `probs` (background first): the logits are their
    logarithms, so softmax gives them back (to float precision)."""

    anchor_spec = SSDLITE300

    def __init__(self, probs):
        super().__init__()
        self.register_buffer("anchors", torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
        self.logits = torch.tensor(probs).log()

    def forward(self, images):
        batch = images.shape[0]
        return torch.zeros(batch, 1, 4), self.logits.expand(batch, 1, -1)


def fixed_detector(probs, threshold: float) -> Detector:
    policy = DetectionPolicy(score_threshold=threshold)
    return Detector(
        as_detector(FixedScores(probs), policy=policy), {"model_name": "fixed", "category_names": list("abc")}
    )


def test_predict_says_once_when_detections_exist_only_below_the_threshold():
    images = [np.zeros((20, 30, 3), np.uint8)] * 3
    below = fixed_detector([0.6, 0.1234, 0.2466, 0.03], threshold=0.3)  # every class below 0.3; the best 0.2466
    with pytest.warns(UserWarning) as caught:
        results = below.predict(images, batch_size=2)  # two batches, three images: one warning
    assert [len(r.scores) for r in results] == [0, 0, 0]
    assert [str(w.message) for w in caught] == [
        "0 detections above 0.3; the best scored 0.246: a lower ssdfast.load(..., score_threshold=) keeps them"
    ]
    # Above a lower threshold: the box that passes is drawn, and nothing is said; the weaker one is still cut.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = fixed_detector([0.6, 0.1234, 0.2466, 0.03], threshold=0.2).predict(images[0])[0]
        np.testing.assert_allclose(kept.scores, [0.2466], atol=1e-6)
        assert kept.names == ["b"]
        # Nothing at all worth a word: every score below the weakest kept for the note (0.05).
        assert len(fixed_detector([0.91, 0.04, 0.03, 0.02], threshold=0.3).predict(images[0])[0].scores) == 0


def test_draw_save_and_to_dict(checkpoint, folder, pil_arrays, oracle, tmp_path):
    detect_arrays, names = oracle
    result = ssdfast.load(checkpoint, device="cpu").predict(folder / "a.png")[0]
    want = detect_arrays(pil_arrays[:1])[0]
    drawn_bgr = draw_detections(pil_arrays[0][..., ::-1].copy(), want["boxes"], want["scores"], want["labels"], names)
    np.testing.assert_array_equal(result.draw(), drawn_bgr[..., ::-1])
    assert not np.array_equal(result.draw(), pil_arrays[0])  # boxes were drawn
    saved = result.save(tmp_path / "out" / "a_detections.png")
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), result.draw())
    assert sorted(p.name for p in saved.parent.iterdir()) == ["a_detections.png"]  # no temporary left
    before = (folder / "a.png").read_bytes()
    with pytest.raises(ValueError, match="is the input image"):
        result.save(folder / "a.png")
    with pytest.raises(ValueError, match="suffix such as .jpg"):
        result.save(tmp_path / "a.unknown")
    assert (folder / "a.png").read_bytes() == before and not (tmp_path / "a.unknown").exists()
    record = json.loads(json.dumps(result.to_dict()))
    height, width = pil_arrays[0].shape[:2]
    assert record["path"] == str(folder / "a.png") and (record["height"], record["width"]) == (height, width)
    assert [r["name"] for r in record["detections"]] == [names[label - 1] for label in want["labels"]]
    np.testing.assert_allclose([r["box"] for r in record["detections"]], want["boxes"], atol=0.05 + 1e-4)


@pytest.mark.slow
def test_to_dict_matches_detect_tool_json_which_is_clipped(checkpoint, folder, tmp_path):
    """tools/detect.py's JSON and Result.to_dict() give the same records, inside the image."""
    result = ssdfast.load(checkpoint, device="cpu").predict(folder / "b.png")[0]
    out = tmp_path / "b_out.png"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "detect.py"),
            "--weights",
            str(checkpoint),
            "--input",
            str(folder / "b.png"),
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    records = json.loads(out.with_suffix(".json").read_text())[str(folder / "b.png")]
    assert records == result.to_dict()["detections"]
    boxes = np.array([r["box"] for r in records])
    height, width = result.image.shape[:2]
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= width and boxes[:, [1, 3]].max() <= height
    assert ((boxes == 0) | (boxes[:, [0, 2, 1, 3]] == [width, width, height, height])).any()  # clipping mattered


def test_evaluation_loop_takes_a_detector_as_it_takes_the_model(checkpoint, synthetic_coco):
    loader = build_loader(synthetic_coco, "val", train=False, batch_size=4, num_workers=0)
    settings = {"policy": DetectionPolicy(score_threshold=0.3), "category_ids": loader.info.category_ids}
    model, _ = load_detector(checkpoint)
    from_model = engine_predict(model, loader, "cpu", **settings)
    from_detector = engine_predict(ssdfast.load(checkpoint, device="cpu"), loader, "cpu", **settings)
    assert len(from_model[0]) > 0 and from_model == from_detector


def match_order_free(a, b, box_atol, score_atol):
    """Every detection of `a` has a partner in `b` (same label, score and box within tolerances), and back."""
    assert len(a.scores) == len(b.scores) > 0
    same = (
        (a.labels[:, None] == b.labels[None])
        & (np.abs(a.scores[:, None] - b.scores[None]) <= score_atol)
        & (np.abs(a.boxes[:, None] - b.boxes[None]).max(-1) <= box_atol)
    )
    assert same.any(1).all() and same.any(0).all()


@pytest.mark.slow
def test_exported_onnx_predicts_what_its_checkpoint_predicts(checkpoint, folder, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ssdfast.deploy.export import export

    model, meta = load_detector(checkpoint)
    export(
        model,
        meta,
        "onnx",
        tmp_path / "m.onnx",
        batch=None,
        with_nms=True,
        policy=DetectionPolicy(score_threshold=0.05, nms_threshold=0.45, max_detections=200),
    )
    # A high threshold keeps the counts well under max_det: no detection cut off by rounding at the end.
    from_pt = ssdfast.load(checkpoint, device="cpu", score_threshold=0.5).predict(folder)
    from_onnx = ssdfast.load(tmp_path / "m.onnx", device="cpu", score_threshold=0.5).predict(folder)
    for pt, onnx in zip(from_pt, from_onnx):
        print(len(pt.scores), "detections")
        match_order_free(pt, onnx, box_atol=0.05, score_atol=1e-4)


def test_readme_example_runs_as_written(checkpoint, folder, pil_arrays, oracle, tmp_path):
    detect_arrays, names = oracle
    (tmp_path / "trained_models").mkdir()
    (tmp_path / "trained_models" / "best.pt").write_bytes(checkpoint.read_bytes())
    Image.open(folder / "c.png").save(tmp_path / "street.jpg", quality=95)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-c", README_EXAMPLE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    street = np.asarray(Image.open(tmp_path / "street.jpg").convert("RGB"))
    want = detect_arrays([street])[0]
    assert len(want["scores"]) > 0
    drawn = draw_detections(street[..., ::-1].copy(), want["boxes"], want["scores"], want["labels"], names)[..., ::-1]
    saved = np.asarray(Image.open(tmp_path / "street_detections.jpg")).astype(int)
    assert saved.shape == street.shape
    # JPEG blurs the thin coloured lines a lot (mean 29 here), yet the file is far nearer the drawing than the photo.
    assert np.abs(saved - drawn).mean() < 0.5 * np.abs(saved - street).mean()


def test_import_ssdfast_stays_light():
    code = "import sys, ssdfast; light = 'torch' not in sys.modules; ssdfast.load; print(light)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
