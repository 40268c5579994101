"""tools/detect.py on cameras and streams (a file:// URL stands in for rtsp://), the clean stop on Ctrl-C,
--classes and --max-det, checked against the tool's own unfiltered output and OpenCV's frame counts."""

import json
import math
import os

import cv2
import detect  # tools/detect.py (pyproject.toml puts tools/ on pytest's path)
import numpy as np
import pytest
import torch
from conftest import tool

from ssdfast.data.transforms import SSDTransform
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.models import build_model

EMPTY = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)  # no boxes: the transform of an image to detect in


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 6-frame MJPG video of the synthetic val images (OpenCV writes and reads MJPG everywhere)."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path


def frames(path) -> int:
    capture, n = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        n += 1
    return n


def test_a_stream_url_is_read_frame_by_frame_into_a_video(trained_run, clip, tmp_path):
    folder, _ = trained_run
    out = tmp_path / "stream.mp4"
    run = tool("detect", "--weights", folder / "last.pt", "--input", f"file://{clip}", "--output", out)
    assert frames(out) == 6 and len(json.loads(out.with_suffix(".json").read_text())) == 6
    has_h264 = cv2.VideoWriter(str(tmp_path / "probe.mp4"), cv2.VideoWriter_fourcc(*"avc1"), 5, (16, 16)).isOpened()
    assert ("no H.264 encoder" in run.stderr) == (not has_h264)


def test_a_camera_that_is_not_there_is_a_named_error(trained_run, tmp_path):
    if cv2.VideoCapture(7).isOpened():
        pytest.skip("this machine has a camera 7")
    run = tool(
        "detect", "--weights", trained_run[0] / "last.pt", "--input", "7", "--output", tmp_path / "cam.mp4", check=False
    )
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == "error: cannot open video source 7"


VideoCapture = cv2.VideoCapture  # the real one (the test below replaces cv2's)


class InterruptedCapture:
    """cv2.VideoCapture of a file whose read() raises KeyboardInterrupt (as Ctrl-C does) after `frames`."""

    def __init__(self, source, frames=3):
        self.capture, self.left = VideoCapture(source), frames

    def read(self):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.capture.read()

    def __getattr__(self, name):
        return getattr(self.capture, name)


def test_ctrl_c_on_a_stream_keeps_the_frames_so_far(trained_run, clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(detect.cv2, "VideoCapture", InterruptedCapture)
    out = tmp_path / "stopped.avi"
    argv = [
        "--weights",
        str(trained_run[0] / "last.pt"),
        "--input",
        f"file://{clip}",
        "--output",
        str(out),
        "--batch-size",
        "1",
    ]
    assert detect.main(argv) == 0
    monkeypatch.undo()
    assert frames(out) == 3 and "stopped (Ctrl-C): 3 frames" in capsys.readouterr().err


def test_classes_and_max_det_select_from_what_the_model_finds(trained_run, synthetic_coco, tmp_path):
    weights, images = trained_run[0] / "last.pt", synthetic_coco / "val2017"
    common = ["--weights", weights, "--input", images, "--score-threshold", "0.01"]
    tool("detect", *common, "--output", tmp_path / "all")
    everything = json.loads((tmp_path / "all" / "detections.json").read_text())
    name = max(
        {r["name"] for recs in everything.values() for r in recs},
        key=lambda n: sum(r["name"] == n for recs in everything.values() for r in recs),
    )  # the most frequent class found
    tool("detect", *common, "--output", tmp_path / "some", "--classes", name, "--max-det", 1)
    some = json.loads((tmp_path / "some" / "detections.json").read_text())
    for image, records in everything.items():
        wanted = [r for r in records if r["name"] == name]  # records come sorted by score
        assert some[image] == wanted[:1], image
    assert any(some.values())
    bad = tool("detect", *common, "--output", tmp_path / "bad", "--classes", "unicorn", check=False)
    assert bad.returncode == 1 and "--classes: unicorn not among the model's classes" in bad.stderr


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """An SSDLite with random weights and BatchNorm's initial statistics: every box scores about 0.4."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random") / "random.pt"
    model = build_model("ssdlite", num_classes=3)
    meta = {"model_name": "ssdlite300_mobilenetv2", "num_classes": 3, "category_names": ["a", "b", "c"]}
    save_checkpoint(path, {"model": model.state_dict(), **meta, "category_ids": [1, 2, 3], "epoch": 0})
    return path, model.eval()


def test_zero_detections_above_the_threshold_says_what_the_best_scored_once(random_weights, tmp_path, capsys):
    weights, model = random_weights
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"  # outputs may not lie inside the input folder
    photos.mkdir()
    images = [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(images):
        cv2.imwrite(str(photos / f"{i}.png"), image[..., ::-1])
    # The oracle: NMS always keeps the best box, so the best detection is the best class score of any anchor.
    batch = torch.stack([SSDTransform(normalised=True)(img, *EMPTY)[0] for img in images])
    with torch.no_grad():
        best = float(model(batch)[1].softmax(-1)[..., 1:].max())
    assert 0.05 < best < 0.9  # detections exist below the threshold of 0.9, none above
    argv = ["--weights", str(weights), "--input", str(photos), "--device", "cpu", "--score-threshold"]
    assert detect.main([*argv, "0.9", "--output", str(tmp_path / "above")]) == 0
    err = capsys.readouterr().err
    shown = math.floor(best * 1000) / 1000
    notes = [line for line in err.splitlines() if line.startswith("note: 0 detections")]
    assert notes == [f"note: 0 detections above 0.9; the best scored {shown:g}: a lower --score-threshold draws them"]
    report = json.loads((tmp_path / "above" / "detections.json").read_text())
    assert len(report) == 3 and not any(report.values())
    assert detect.main([*argv, f"{shown - 0.001:g}", "--output", str(tmp_path / "below")]) == 0
    assert "note:" not in capsys.readouterr().err  # drawn: nothing to explain
    report = json.loads((tmp_path / "below" / "detections.json").read_text())
    assert max(r["score"] for recs in report.values() for r in recs) == pytest.approx(best, abs=1e-4)


def test_a_listed_name_that_is_no_regular_file_is_left_out_with_a_warning(tmp_path):
    """A folder holding one image, a FIFO and a link to /dev/zero named as images: the image is detected,
    the other two are never opened (a FIFO would block, /dev/zero never ends), one warning counts them."""
    from PIL import Image

    from ssdfast.machinery.checkpoint import save_checkpoint as save
    from ssdfast.models import build_model

    weights = tmp_path / "w.pt"
    meta = {"model_name": "ssdlite300_mobilenetv2", "num_classes": 2, "category_names": ["a", "b"]}
    save(weights, {"model": build_model("ssdlite", num_classes=2).state_dict(), **meta, "epoch": 0})
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (80, 60), "gray").save(folder / "a.jpg")
    os.mkfifo(folder / "x.jpg")
    (folder / "z.jpg").symlink_to("/dev/zero")
    result = tool("detect", "--weights", weights, "--input", folder, "--output", tmp_path / "out", "--device", "cpu")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 listed name(s) are not regular files and are left out, e.g. {folder / 'x.jpg'}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "a.jpg",
        "detections.json",
    ]
