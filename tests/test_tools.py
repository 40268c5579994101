"""The tools end to end on CPU: train, resume after SIGKILL, DDP (torchrun, gloo), eval, detect, bad inputs."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch

# tool, train_args: new test files may import them from here too
from conftest import RESUMED_EPOCHS, ROOT, free_port, resume_args, tool, torchrun, train_args  # noqa: F401

from ssdfast.inference import load_detector
from ssdfast.machinery.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_run):
    """conftest's trained_run: tools/train.py, 2 epochs (shared by every test file)."""
    return trained_run


def test_two_epoch_training(trained):
    folder, result = trained
    assert (folder / "last.pt").is_file() and (folder / "best.pt").is_file()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in result.stdout
    epochs = [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "iteration" not in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all("coco/AP" in r and "coco/AR100" in r for r in epochs)
    assert epochs[1]["loss"] < epochs[0]["loss"]
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    assert list((folder / "tensorboard").iterdir())


def test_eval_tool(trained, synthetic_coco, tmp_path):
    folder = tmp_path  # eval writes beside the weights: a copy of them, the shared run stays as it is
    (folder / "last.pt").write_bytes((trained[0] / "last.pt").read_bytes())
    result = tool(
        "eval", "--data-path", synthetic_coco, "--weights", folder / "last.pt", "--batch-size", 3, "--num-workers", 0
    )
    assert "Average Recall" in result.stdout
    metrics = json.loads((folder / "metrics_val.json").read_text())
    assert metrics["images_evaluated"] == metrics["distinct_images_evaluated"] == 8
    assert set(metrics) >= {"AP", "AP50", "AP75", "AP_small", "AR1", "AR100", "AR_large"}
    fast = tool(
        "eval",
        "--data-path",
        synthetic_coco,
        "--weights",
        folder / "last.pt",
        "--num-workers",
        0,
        "--backend",
        "faster-coco-eval",
        "--output",
        folder / "fast_detections.json",
    )
    fast_metrics = json.loads((folder / "fast_detections.metrics.json").read_text())
    assert abs(fast_metrics["AP"] - metrics["AP"]) < 1e-6, fast.stdout


def test_detect_tool_on_image_folder_glob_and_video(trained, synthetic_coco, tmp_path):
    folder, _ = trained
    weights = folder / "last.pt"
    images = sorted((synthetic_coco / "val2017").glob("*.jpg"))
    tool(
        "detect",
        "--weights",
        weights,
        "--input",
        images[0],
        "--output",
        tmp_path / "one.jpg",
        "--score-threshold",
        0.05,
    )
    assert cv2.imread(str(tmp_path / "one.jpg")).shape == cv2.imread(str(images[0])).shape
    report = json.loads((tmp_path / "one.json").read_text())
    assert list(report) == [str(images[0])]
    assert all(set(d) == {"box", "score", "label", "name"} for d in report[str(images[0])])

    tool("detect", "--weights", weights, "--input", images[0].parent, "--output", tmp_path / "folder")
    assert len(list((tmp_path / "folder").glob("*.jpg"))) == len(images)
    tool("detect", "--weights", weights, "--input", f"{images[0].parent}/*.jpg", "--output", tmp_path / "glob")
    assert len(json.loads((tmp_path / "glob" / "detections.json").read_text())) == len(images)

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for path in images[:5]:
        writer.write(cv2.resize(cv2.imread(str(path)), (320, 240)))
    writer.release()
    tool("detect", "--weights", weights, "--input", video, "--output", tmp_path / "out.mp4", "--batch-size", 2)
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert len(json.loads((tmp_path / "out.json").read_text())) == 5


def test_tools_reject_bad_inputs(trained, synthetic_coco, tmp_path):
    folder, _ = trained
    missing = tool(
        "detect", "--weights", tmp_path / "nope.pt", "--input", "x.jpg", "--output", tmp_path / "o.jpg", check=False
    )
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
    no_input = tool(
        "detect",
        "--weights",
        folder / "last.pt",
        "--input",
        tmp_path / "missing.jpg",
        "--output",
        tmp_path / "o.jpg",
        check=False,
    )
    assert no_input.returncode == 1 and "no input images found" in no_input.stderr
    (tmp_path / "broken.mp4").write_bytes(os.urandom(2000))
    broken = tool(
        "detect",
        "--weights",
        folder / "last.pt",
        "--input",
        tmp_path / "broken.mp4",
        "--output",
        tmp_path / "o.mp4",
        check=False,
    )
    assert broken.returncode == 1 and "broken.mp4" in broken.stderr
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    bad = tool("eval", "--data-path", synthetic_coco, "--weights", tmp_path / "bad.pt", check=False)
    assert bad.returncode == 1 and "cannot read checkpoint" in bad.stderr
    no_data = tool("train", *train_args(tmp_path / "nowhere", tmp_path / "r", 1), check=False)
    assert no_data.returncode != 0 and "instances_train2017.json" in no_data.stderr
    graphs = tool(
        "train", *train_args(synthetic_coco, tmp_path / "g", 1, "--cuda-graphs", "--device", "cpu"), check=False
    )
    assert graphs.returncode != 0 and "--cuda-graphs needs a CUDA device" in graphs.stderr


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(trained, synthetic_coco, tmp_path):
    folder, _ = trained
    run = tmp_path / "diverge"
    run.mkdir()
    (run / "last.pt").write_bytes((folder / "last.pt").read_bytes())
    before = (run / "last.pt").read_bytes()
    result = tool("train", *train_args(synthetic_coco, run, 4, "--lr", "1e12", "--log-every", 1), check=False)
    assert result.returncode == 2 and "non-finite loss at epoch 2, iteration" in result.stderr
    assert (run / "last.pt").read_bytes() == before


def final_weights(folder):
    return load_checkpoint(folder / "last.pt")["model"]


def test_resume_after_sigkill_matches_an_uninterrupted_run(straight_run, synthetic_coco, tmp_path):
    """Killed after its first epoch checkpoint, rerun: the weights of conftest's uninterrupted run."""
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), *map(str, resume_args(synthetic_coco, killed))]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = load_checkpoint(killed / "last.pt")["epoch"]
    assert interrupted_at < RESUMED_EPOCHS - 1, "the run finished before it could be killed"
    resumed = tool("train", *resume_args(synthetic_coco, killed))
    assert f"resuming from {killed / 'last.pt'}: epoch {interrupted_at} done" in resumed.stdout
    a, b = final_weights(straight_run), final_weights(killed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_ddp_two_processes_on_cpu(ddp_run, synthetic_coco, tmp_path):
    weights = tmp_path / "last.pt"  # a copy: the shared run's folder stays as it was
    weights.write_bytes((ddp_run / "last.pt").read_bytes())
    model, meta = load_detector(weights)
    assert meta["num_classes"] == 3 and meta["epoch"] == 0
    result = tool(
        "eval", "--data-path", synthetic_coco, "--weights", weights, "--batch-size", 3, "--num-workers", 0,
        prefix=torchrun(),
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics_val.json").read_text())
    assert metrics["images_evaluated"] == metrics["distinct_images_evaluated"] == 8, result.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("data", ["pytorch_4_workers", "dali"])
def test_cuda_graph_training_with_loader_threads(synthetic_coco, tmp_path, data):
    """--cuda-graphs captures in the first iteration while the loader's threads (pin-memory thread,
    DALI prefetch) make CUDA calls: the capture must not be invalidated by them."""
    extra = ["--num-workers", 4, "--dali"] if data == "dali" else ["--num-workers", 4]
    if data == "dali":
        pytest.importorskip("nvidia.dali")
    result = tool(
        "train",
        *train_args(
            synthetic_coco, tmp_path, 2, "--amp", "--cuda-graphs", *extra, "--iters-per-epoch", 3, "--eval-every", 2
        ),
    )
    assert "cuda graphs True" in result.stdout and "epoch 1:" in result.stdout
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_training_and_eval_print_the_same_ap_for_one_checkpoint(trained, synthetic_coco, tmp_path):
    """One default for each SSD constant: the per-epoch evaluation of train.py and eval.py agree."""
    folder, _ = trained
    epochs = [r for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "iteration" not in r]
    result = tool(
        "eval",
        "--data-path",
        synthetic_coco,
        "--weights",
        folder / "last.pt",
        "--batch-size",
        4,
        "--num-workers",
        0,
        "--output",
        tmp_path / "d.json",
    )
    metrics = json.loads((tmp_path / "d.metrics.json").read_text())
    assert abs(metrics["AP"] - epochs[-1]["coco/AP"]) < 1e-9, result.stdout
