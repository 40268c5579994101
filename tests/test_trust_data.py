"""Data a user hands us is not trusted: a failure with loader workers alive ends the run (no hang, no
orphans), images are capped in pixels from their header before decoding, image paths stay inside
the image folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tool, train_args
from PIL import Image
from test_bad_input import fake_weights, names_of
from test_data import needs_dali

from ssdfast.data import CocoDetection, build_loader, read_image, write_synthetic_coco

ROOT = Path(__file__).resolve().parent.parent
OVER_CAP = "images over the pixel cap (--max-pixels)"
OUTSIDE = "image paths outside the image folder"


# ---------------------------------------------------------------- a failure with workers alive ends the run
# Loaded at interpreter start (sitecustomize) of the tool under test: raises at the chosen point and
# records which process raised and its loader workers; records when the main process reports the
# uncaught error (sys.excepthook: from there on, only the interpreter's exit is left).
INJECT = r"""
import json, multiprocessing, os, sys, time

def _fail(where):
    record = {"pid": os.getpid(), "workers": [p.pid for p in multiprocessing.active_children()]}
    with open(os.environ["INJECT_LOG"], "w") as log:
        json.dump(record, log)
    raise RuntimeError(f"injected failure at {where}")

def _on_call(n, original, where):
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _fail(where)
        return original(*args, **kwargs)
    return wrapped

def _reported(*args):
    with open(os.environ["INJECT_LOG"] + ".reported", "w") as log:
        log.write(str(time.time()))
    _excepthook(*args)

point = os.environ.get("INJECT")
_excepthook, sys.excepthook = sys.excepthook, _reported
if point == "load":  # decoding the 3rd image, inside a loader worker
    import ssdfast.data.coco as coco
    coco.read_image = _on_call(3, coco.read_image, point)
elif point == "step":  # the 2nd training step (train.py) or evaluated batch (eval.py), in the main process
    import ssdfast.evaluation.loop as engine
    import ssdfast.training.step as train_step
    train_step.TrainStep.__call__ = _on_call(2, train_step.TrainStep.__call__, point)
    engine.detections_to_coco = _on_call(2, engine.detections_to_coco, point)
elif point == "evaluation":  # COCO evaluation, after the loaders' passes (their persistent workers idle)
    import ssdfast.evaluation.loop as engine
    engine.coco_evaluate = _on_call(1, engine.coco_evaluate, point)
"""


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def run_injected(tmp_path, point: str, cmd: list, timeout: float = 120):
    """Run `cmd` in its own process group with a failure injected at `point` -> (exit code, output,
    the injection record, seconds from the main process's report of the error to the exit). A run
    still going after `timeout` (the hang) is killed with its whole group and fails the test."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(INJECT)
    log = tmp_path / f"inject_{point}.json"
    env = {
        **os.environ,
        "INJECT": point,
        "INJECT_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, *map(str, cmd)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{point}: still running {timeout} s after the start (hung):\n{output[-3000:]}")
    ended = time.time()
    reported = Path(f"{log}.reported")
    assert log.exists() and reported.exists(), f"{point}: the injected failure was never reached:\n{output[-3000:]}"
    record = {**json.loads(log.read_text()), "main": process.pid}
    deadline = time.time() + 5  # killed workers may take a moment to leave the process table
    while group_members(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group_members(process.pid), f"{point}: processes left behind: {group_members(process.pid)}"
    return process.returncode, output, record, ended - float(reported.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["load", "step", "evaluation"])
def test_a_training_failure_with_workers_ends_within_seconds(point, synthetic_coco, tmp_path):
    extra = ("--batch-size", 2, "--num-workers", 2, "--iters-per-epoch", 2, "--eval-batches", 1, "--log-every", 1)
    cmd = [ROOT / "tools" / "train.py", *train_args(synthetic_coco, tmp_path / "run", 1, *extra)]
    code, output, record, took = run_injected(tmp_path, point, cmd)
    assert code == 1 and f"RuntimeError: injected failure at {point}" in output, output[-3000:]
    assert took < 30, f"{point}: {took:.1f} s from the error's report to the exit"
    if point == "load":  # raised in a worker, reported by the main process
        assert record["pid"] != record["main"], record
    else:
        assert len(record["workers"]) >= 2, record  # the loader workers were alive at the failure


@pytest.mark.slow
@pytest.mark.parametrize("point", ["load", "step", "evaluation"])
def test_an_evaluation_failure_with_workers_ends_within_seconds(point, synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    cmd = [
        ROOT / "tools" / "eval.py",
        "--data-path",
        synthetic_coco,
        "--weights",
        weights,
        "--batch-size",
        2,
        "--num-workers",
        2,
        "--output",
        tmp_path / "out" / "detections.json",
    ]
    code, output, record, took = run_injected(tmp_path, point, cmd)
    assert code == 1 and f"RuntimeError: injected failure at {point}" in output, output[-3000:]
    assert took < 30, f"{point}: {took:.1f} s from the error's report to the exit"
    assert record["pid"] != record["main"] if point == "load" else len(record["workers"]) >= 2, record


# ---------------------------------------------------------------- the pixel cap, from the header
def claimed_jpeg(path, width: int, height: int) -> Path:
    """A valid 8x8 JPEG (~630 bytes) whose SOF0 header is patched to claim width x height."""
    _, encoded = cv2.imencode(".jpg", np.full((8, 8, 3), 100, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 50])
    raw = bytearray(encoded.tobytes())
    sof = raw.find(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    raw[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    Path(path).write_bytes(raw)
    return Path(path)


def test_read_image_caps_pixels_before_decoding(tmp_path, monkeypatch):
    bomb = claimed_jpeg(tmp_path / "bomb.jpg", 65500, 65500)
    assert bomb.stat().st_size < 700
    with pytest.raises(cv2.error):  # what read_image must not let through
        cv2.imdecode(np.fromfile(bomb, np.uint8), cv2.IMREAD_COLOR)
    assert read_image(bomb) is None
    assert read_image(claimed_jpeg(tmp_path / "8k.jpg", 8000, 8000)) is None  # 64 MP > the default 50 MP
    image = tmp_path / "30x40.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    width, height = Image.open(image).size
    assert read_image(image, max_pixels=width * height).shape == (30, 40, 3)  # at the cap: read
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))
    assert read_image(image, max_pixels=width * height - 1) is None  # one pixel over: never decoded
    assert read_image(bomb, max_pixels=10**8) is None and not decoded


def small_dataset(root, num_train=4, num_val=4, seed=2) -> Path:
    return write_synthetic_coco(root, num_train=num_train, num_val=num_val, seed=seed)


def first_image(root, split) -> Path:
    data = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
    return root / f"{split}2017" / data["images"][0]["file_name"]


@pytest.mark.slow
def test_train_eval_detect_skip_and_count_images_over_the_cap(tmp_path):
    root = small_dataset(tmp_path / "data")
    for split in ("train", "val"):
        claimed_jpeg(first_image(root, split), 65500, 65500)
    run = tmp_path / "run"
    trained = tool("train", *train_args(root, run, 1, "--log-every", 1))
    assert "warning: epoch 0: 1 unreadable image(s) skipped" in trained.stdout, trained.stdout[-2000:]
    assert "1 unreadable image(s) left out of evaluation" in trained.stdout

    val = sorted((root / "val2017").glob("*.jpg"))
    pixels = {p: Image.open(p).size[0] * Image.open(p).size[1] for p in val if p != first_image(root, "val")}
    cap = sorted(pixels.values())[1]  # two images at or under it; the third and the bomb over it
    evaluated = tool(
        "eval",
        "--data-path",
        root,
        "--weights",
        run / "last.pt",
        "--num-workers",
        0,
        "--max-pixels",
        cap,
        "--output",
        tmp_path / "eval" / "d.json",
    )
    metrics = json.loads((tmp_path / "eval" / "d.metrics.json").read_text())
    assert metrics["images_evaluated"] == sum(n <= cap for n in pixels.values()) == 2
    assert f"{len(val) - 2} unreadable image(s) left out of evaluation" in evaluated.stdout

    detected = tool(
        "detect",
        "--weights",
        run / "last.pt",
        "--input",
        root / "val2017",
        "--output",
        tmp_path / "drawn",
        "--max-pixels",
        cap,
    )
    report = json.loads((tmp_path / "drawn" / "detections.json").read_text())
    assert sorted(report) == sorted(str(p) for p, n in pixels.items() if n <= cap)
    assert f"cannot read image {first_image(root, 'val')}" in detected.stderr and "Traceback" not in detected.stderr
    refused = tool(
        "detect",
        "--weights",
        run / "last.pt",
        "--input",
        val[0],
        "--output",
        tmp_path / "x.jpg",
        "--max-pixels",
        0,
        check=False,
    )
    assert refused.returncode == 2 and "--max-pixels: must be an integer in [1, 178956970], got 0" in refused.stderr


@needs_dali
def test_dali_path_skips_and_lists_bad_headers_as_the_pytorch_path_does(tmp_path):
    """A header over the pixel cap or no image at all: DALI never sees them (its workers check the header as
    the GPU path's do); the batches list them in Batch.skipped and the rest is read, as on the PyTorch path."""
    root = small_dataset(tmp_path / "data", num_val=6)
    val = sorted((root / "val2017").glob("*.jpg"))
    claimed_jpeg(first_image(root, "val"), 65500, 65500)
    data = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    (root / "val2017" / data["images"][1]["file_name"]).write_bytes(b"not an image")
    sizes = {i["id"]: i["width"] * i["height"] for i in data["images"][2:]}
    cap = sorted(sizes.values())[-2]  # the largest of the good ones is over it
    paths = {
        dali: build_loader(
            root, "val", train=False, batch_size=2, num_workers=1, backend="dali" if dali else "pytorch", max_pixels=cap
        )
        for dali in (False, True)
    }
    seen = {dali: sorted(i for batch in loader for i in batch.image_ids.tolist()) for dali, loader in paths.items()}
    skipped = {dali: sorted(p for batch in loader for p in batch.skipped) for dali, loader in paths.items()}
    assert seen[True] == seen[False] == sorted(i for i, n in sizes.items() if n <= cap)
    assert len(seen[True]) == len(val) - 3 and len(skipped[True]) == 3 and skipped[True] == skipped[False]
    assert paths[True].info.dropped == paths[False].info.dropped


# ---------------------------------------------------------------- image paths stay inside the image folder
def dataset_with_outside_paths(tmp_path) -> tuple[Path, list[str]]:
    """A val set whose 5 entries are: a plain image, an absolute path, a ../ path and a symlink leading
    outside the image folder, and a symlink inside it; the image folder itself is a symlink (allowed)."""
    root = small_dataset(tmp_path / "data", num_val=5)
    real = tmp_path / "real_val"
    (root / "val2017").rename(real)
    (root / "val2017").symlink_to(real, target_is_directory=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    names = [i["file_name"] for i in data["images"]]
    for name in names[1:4]:
        shutil.move(real / name, outside / name)
    (real / names[3]).symlink_to(outside / names[3])
    (real / names[4]).rename(real / "kept.jpg")
    (real / names[4]).symlink_to(real / "kept.jpg")
    data["images"][1]["file_name"] = str(outside / names[1])
    data["images"][2]["file_name"] = f"../outside/{names[2]}"
    ann.write_text(json.dumps(data))
    return root, [i["file_name"] for i in data["images"]]


def test_image_paths_outside_the_folder_are_dropped_and_counted(tmp_path):
    root, names = dataset_with_outside_paths(tmp_path)
    with pytest.warns(UserWarning, match="3 image path.* lead outside the image folder.*--allow-outside-paths"):
        kept = CocoDetection(root, "val")
    assert kept.dropped[OUTSIDE] == 3
    assert [r.file_name for r in kept.records] == [names[0], names[4]]  # the outside ones are never read
    allowed = CocoDetection(root, "val", allow_outside_paths=True)
    assert [r.file_name for r in allowed.records] == names and OUTSIDE not in allowed.dropped
    for i in range(len(allowed)):
        assert "image" in allowed[i]  # read and decoded


@pytest.mark.slow
def test_eval_reads_outside_paths_only_when_allowed(tmp_path):
    root, names = dataset_with_outside_paths(tmp_path)
    weights = fake_weights(tmp_path / "w.pt", names_of(root))
    for flag, expected in (((), 2), (("--allow-outside-paths",), 5)):
        out = tmp_path / f"eval{len(flag)}" / "d.json"
        result = tool("eval", "--data-path", root, "--weights", weights, "--num-workers", 0, "--output", out, *flag)
        assert json.loads(out.with_name("d.metrics.json").read_text())["images_evaluated"] == expected
        assert ("--allow-outside-paths reads them" in result.stderr) == (not flag)


@pytest.mark.parametrize(
    "change, words",
    [
        ("long_name", "its category_names must be num_classes strings of at most 256 characters"),
        ("too_many", "its num_classes must be an integer in [1, 10000] (found 10001)"),
    ],
)
def test_categories_no_checkpoint_could_hold_are_refused_before_training(change, words, tmp_path):
    """The model-file rules (machinery/model_metadata: what every load of a checkpoint checks) applied to the
    dataset at load: a 300-character category name, or 10,001 categories, would train into a last.pt that
    nothing loads (and 10,001 heads take gigabytes). One line, nothing written."""
    from ssdfast.data import write_synthetic_coco

    data = write_synthetic_coco(tmp_path / "data", num_train=4, num_val=2, seed=1)
    path = data / "annotations" / "instances_train2017.json"
    coco = json.loads(path.read_text())
    if change == "long_name":
        coco["categories"][0]["name"] = "n" * 300
    else:
        coco["categories"] += [{"id": 100 + i, "name": f"c{i}"} for i in range(10_001 - len(coco["categories"]))]
    path.write_text(json.dumps(coco))
    result = tool("train", *train_args(data, tmp_path / "run", 1), check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith(f"error: the categories of {data} cannot go in a checkpoint: {words}"), errors
    assert not (tmp_path / "run" / "last.pt").exists()
