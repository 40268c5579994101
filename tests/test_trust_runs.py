"""Runs that cannot clobber each other: one training per save folder, outputs written atomically,
numeric flags range-checked before any work, video inputs and outputs checked."""

import argparse
import hashlib
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import demo  # tools/*.py: pyproject.toml puts tools/ on pytest's path
import detect
import eval as eval_tool
import export
import numpy as np
import pytest
import torch
import train
from test_bad_input import fake_weights, names_of
from test_tools import ROOT, tool, train_args

from ssdfast.machinery.outputs import OWN_FILES, atomic_write
from ssdfast.models import build_model
from ssdfast.training.lock import FolderInUseError, SaveFolderLock

QUICK = ("--iters-per-epoch", 1, "--eval-every", 0)


def planted_temporary(folder: Path) -> Path:
    """What a checkpoint write killed mid-way leaves behind (ssdfast.machinery.outputs' naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".last.pt.k1ll3d.tmp"
    tmp.write_bytes(b"half a checkpoint")
    return tmp


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------- item 5: one training per save folder
@pytest.mark.slow
def test_a_second_training_is_refused_while_the_first_holds_the_folder(synthetic_coco, tmp_path):
    folder = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tools" / "train.py"),
            *map(str, train_args(synthetic_coco, folder, 50, "--eval-every", 0)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (folder / "train.lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        tmp = planted_temporary(folder)  # the first run's write in progress, as far as a newcomer can tell
        second = tool("train", *train_args(synthetic_coco, folder, 1, *QUICK), check=False)
        assert second.returncode == 1, second.stdout + second.stderr
        error = second.stderr.strip()
        assert error.count("\n") == 0 and error.startswith(
            f"error: the save folder {folder} is in use by pid {first.pid} on host {socket.gethostname()}"
        ), error
        assert "choose another --save-folder" in error and "ssd:" not in second.stdout  # refused before loading
        assert tmp.exists()  # only the holder removes temporaries
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGTERM)  # a stop request: exit 75, and the lock goes with the run
        output = first.communicate(timeout=300)[0]
        assert first.returncode == 75, output[-2000:]
        assert not (folder / "train.lock").exists()
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_run_is_taken_over_and_released_on_error_and_at_the_end(synthetic_coco, tmp_path):
    folder = tmp_path / "run"
    tmp = planted_temporary(folder)
    pid = dead_pid()
    (folder / "train.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    failed = tool("train", *train_args(tmp_path / "no_data", folder, 1), check=False)
    assert (
        f"taking over {folder / 'train.lock'}: its training (pid {pid}, started earlier) is no longer running"
        in failed.stdout
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error:") and not tmp.exists()
    assert not (folder / "train.lock").exists()  # released on an error

    tmp = planted_temporary(folder)
    result = tool("train", *train_args(synthetic_coco, folder, 1, *QUICK))
    assert "taking over" not in result.stdout and f"removed {tmp.name}" in result.stdout and not tmp.exists()
    assert (folder / "last.pt").is_file() and not (folder / "train.lock").exists()  # released at a normal exit


def test_a_lock_from_another_host_is_refused_with_how_to_override(tmp_path):
    lock = tmp_path / "train.lock"
    lock.write_text(json.dumps({"pid": 4321, "host": "gpu-node-7", "since": "yesterday"}))
    with pytest.raises(
        FolderInUseError,
        match=f"names a training on another host, pid 4321 on host gpu-node-7 "
        f".*if it has ended, delete {lock} and start again",
    ):
        SaveFolderLock(tmp_path).acquire(say=pytest.fail)
    assert json.loads(lock.read_text())["host"] == "gpu-node-7"  # left as it was
    other = tmp_path / "other"
    other.mkdir()
    with SaveFolderLock(other):
        with pytest.raises(FolderInUseError, match=f"is in use by pid {os.getpid()} on host {socket.gethostname()}"):
            SaveFolderLock(other).acquire()  # another holder, even in the same process
    assert not (other / "train.lock").exists()


# ---------------------------------------------------------------- item 6: atomic outputs
def test_a_signal_in_the_middle_of_a_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "detections.json"
    target.write_text('["the previous run"]')
    script = (
        f"import os, signal\nfrom ssdfast.machinery.outputs import atomic_write\n"
        f"def write(f):\n    f.write(b'[' * 5000)\n    f.flush()\n    os.kill(os.getpid(), signal.SIGTERM)\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGTERM, killed.stderr
    assert target.read_text() == '["the previous run"]'
    with pytest.raises(ZeroDivisionError):
        atomic_write(target, lambda f: (f.write(b"[1, 2"), 1 / 0))
    assert target.read_text() == '["the previous run"]'
    assert [p.stat().st_size for p in tmp_path.glob(".detections.json.*.tmp")] == [5000]  # the killed one only


def limited(max_bytes):
    """preexec_fn: no file may grow beyond max_bytes (Python ignores SIGXFSZ: the write fails with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


@pytest.mark.slow
def test_eval_failing_while_writing_never_mixes_two_runs(synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    out, metrics_file = tmp_path / "det.json", tmp_path / "det.metrics.json"
    args = [
        sys.executable,
        str(ROOT / "tools" / "eval.py"),
        "--data-path",
        str(synthetic_coco),
        "--weights",
        str(weights),
        "--num-workers",
        "0",
        "--output",
        str(out),
    ]
    tool("eval", *args[2:], "--score-threshold", "0.01")
    good, metrics = out.read_bytes(), json.loads(metrics_file.read_text())
    assert len(good) > 8192 and metrics["detections_sha256"] == hashlib.sha256(good).hexdigest()

    # The write of the detections fails half-way (file size limit): the previous ones stay whole.
    failed = subprocess.run(
        [*args, "--score-threshold", "0.02"], cwd=ROOT, capture_output=True, text=True, preexec_fn=limited(4096)
    )
    assert failed.returncode == 1 and failed.stderr.strip().splitlines()[-1] == (
        f"error: cannot write detections file det.json to {tmp_path}: File too large; the previous one is intact"
    )
    assert out.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))
    assert json.loads(metrics_file.read_text())["detections_sha256"] == hashlib.sha256(good).hexdigest()

    # The new detections fit, the metrics do not: the pair is written together, so both previous ones stay
    # (never new detections beside the earlier run's metrics, nor beside none). The limit leaves room for
    # the line the detections add to the folder's list of ssdfast's files (outputs.OWN_FILES).
    room = (tmp_path / OWN_FILES).stat().st_size + 150
    assert room < len(metrics_file.read_bytes())
    between = subprocess.run(
        [*args, "--score-threshold", "0.999"], cwd=ROOT, capture_output=True, text=True, preexec_fn=limited(room)
    )
    assert between.returncode == 1 and "cannot write metrics file det.metrics.json" in between.stderr
    assert out.read_bytes() == good and not list(tmp_path.glob(".*.tmp"))
    assert json.loads(metrics_file.read_text())["detections_sha256"] == hashlib.sha256(good).hexdigest()


# ---------------------------------------------------------------- item 7: numeric flags
# The ranges the tools promise (README): flag -> (lowest, highest, lowest excluded, highest excluded, integer).
INT, REAL = True, False
PILLOW_LIMIT = 178_956_970  # Pillow refuses to parse a header beyond it (--max-pixels' top)
RANGES = {
    "train": {
        "--epochs": (1, None, INT),
        "--batch-size": (1, 4096, INT),
        "--multistep": (0, None, INT),
        "--lr": ((0, "open"), None, REAL),
        "--momentum": (0, (1, "open"), REAL),
        "--weight-decay": (0, None, REAL),
        "--warmup": (0, None, INT),
        "--nms-threshold": ((0, "open"), 1, REAL),
        "--num-workers": (0, 256, INT),
        "--eval-every": (0, None, INT),
        "--eval-batches": (1, None, INT),
        "--iters-per-epoch": (1, None, INT),
        "--seed": (0, 2**32 - 1, INT),
        "--keep-checkpoints": (0, None, INT),
        "--dist-timeout": ((0, "open"), 7 * 24 * 3600, REAL),
        "--max-boxes": (1, 10_000, INT),
        "--log-every": (1, None, INT),
        "--max-pixels": (1, PILLOW_LIMIT, INT),
        "--max-image-bytes": (1, 2**40, INT),
    },
    "eval": {
        "--batch-size": (1, 4096, INT),
        "--num-workers": (0, 256, INT),
        "--nms-threshold": ((0, "open"), 1, REAL),
        "--score-threshold": (0, (1, "open"), REAL),
        "--max-batches": (1, None, INT),
        "--max-pixels": (1, PILLOW_LIMIT, INT),
        "--max-image-bytes": (1, 2**40, INT),
    },
    "detect": {
        "--batch-size": (1, 4096, INT),
        "--nms-threshold": ((0, "open"), 1, REAL),
        "--score-threshold": (0, (1, "open"), REAL),
        "--max-pixels": (1, PILLOW_LIMIT, INT),
        "--max-image-bytes": (1, 2**40, INT),
        "--max-det": (1, 100_000, INT),
    },
    "export": {
        "--batch": (1, 4096, INT),
        "--nms-threshold": ((0, "open"), 1, REAL),
        "--score-threshold": (0, (1, "open"), REAL),
        "--max-det": (1, 100_000, INT),
        "--calib-images": (1, 2000, INT),
        "--val-images": (1, 100_000, INT),
        "--max-ap-drop": (0, 100, REAL),
    },
    "demo": {
        "--epochs": (1, None, INT),
        "--batch-size": (1, 4096, INT),
        "--seed": (0, 2**32 - 1, INT),
    },
}
REQUIRED = {
    "train": ["--data-path", "d", "--no-nesterov"],
    "eval": ["--data-path", "d", "--weights", "w"],
    "detect": ["--weights", "w", "--input", "i", "--output", "o"],
    "export": ["--weights", "w", "--format", "onnx", "--output", "o.onnx"],
    "demo": [],
}
TOOLS = {"train": train, "eval": eval_tool, "detect": detect, "export": export, "demo": demo}
BOUNDARIES = [
    "0",
    "-1",
    "1",
    "0.5",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "4096",
    "4097",
    "10000",
    "10001",
    "100000",
    "100001",
    "604800",
    "604801",
    "178956970",
    "178956971",
    "4294967295",
    "4294967296",
    str(10**30),
    "1e30",
    "2.5",
    "",
    "x",
]


def allowed(text, low, high, integer):
    """The oracle: is `text` inside the promised range (parsed independently of ssdfast.flag_types)?"""
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        return False
    if not math.isfinite(value):
        return False
    (low, low_open), (high, high_open) = [b if isinstance(b, tuple) else (b, False) for b in (low, high)]
    return ((value > low) if low_open else (value >= low)) and (
        high is None or ((value < high) if high_open else (value <= high))
    )


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_numeric_flag_refuses_what_is_out_of_range_and_accepts_the_rest(name, capsys):
    checked = 0
    for flag, (low, high, integer) in RANGES[name].items():
        for text in BOUNDARIES:
            argv = [*REQUIRED[name], f"{flag}={text}"]
            if allowed(text, low, high, integer):
                value = getattr(TOOLS[name].get_args(argv), flag[2:].replace("-", "_"))
                assert value == ([int(text)] if flag == "--multistep" else (int if integer else float)(text)), (
                    flag,
                    text,
                )
            else:
                with pytest.raises(SystemExit) as refused:
                    TOOLS[name].get_args(argv)
                last = capsys.readouterr().err.strip().splitlines()[-1]
                assert refused.value.code == 2 and re.match(rf"\S+: error: argument {flag}: ", last), (flag, text, last)
                assert text == "" or text in last, last  # the error shows the value given
            checked += 1
    assert checked == len(RANGES[name]) * len(BOUNDARIES)


def test_every_numeric_flag_of_every_tool_is_range_checked(monkeypatch):
    """A numeric flag parsed by bare int/float, or missing from RANGES, would slip past the test above."""
    seen = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        seen.update({a.option_strings[0]: a.type for a in self._actions if a.type is not None})
        return original(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for name, module in TOOLS.items():
        seen.clear()
        module.get_args(REQUIRED[name])
        assert set(seen) == set(RANGES[name]), (name, set(seen) ^ set(RANGES[name]))
        assert not [flag for flag, kind in seen.items() if kind in (int, float)], name


def test_nesterov_needs_a_momentum(capsys):
    with pytest.raises(SystemExit):
        train.get_args(["--data-path", "d", "--momentum", "0"])
    assert "--momentum: Nesterov momentum needs a momentum > 0 (or pass --no-nesterov)" in capsys.readouterr().err
    assert train.get_args(["--data-path", "d", "--momentum", "0", "--no-nesterov"]).momentum == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, argv",
    [
        ("train", ["--data-path", "{data}", "--save-folder", "{tmp}/run", "--max-boxes", "0"]),
        ("eval", ["--data-path", "{data}", "--weights", "{tmp}/w.pt", "--score-threshold", "2"]),
        ("detect", ["--weights", "{tmp}/w.pt", "--input", "{tmp}", "--output", "{tmp}/o", "--batch-size", "0"]),
        (
            "export",
            ["--weights", "{tmp}/w.pt", "--format", "onnx", "--output", "{tmp}/o.onnx", "--nms-threshold", "nan"],
        ),
    ],
)
def test_the_command_lines_refuse_before_any_work(name, argv, synthetic_coco, tmp_path):
    result = tool(name, *[a.format(data=synthetic_coco, tmp=tmp_path) for a in argv], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"{name}.py: error: argument {argv[-2]}:")
    assert not list(tmp_path.iterdir())  # nothing created


@pytest.mark.slow
def test_unusable_backbone_weights_are_a_named_error(synthetic_coco, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read the backbone weights {garbage}: .*torchvision mobilenet_v2"):
        build_model("ssdlite", backbone_weights=str(garbage))
    other = tmp_path / "resnet.pth"
    torch.save(build_model("ssd", backbone_weights="none").state_dict(), other)
    with pytest.raises(ValueError, match="do not fit torchvision's mobilenet_v2: .*Missing key"):
        build_model("ssdlite", backbone_weights=str(other))
    result = tool(
        "train", *train_args(synthetic_coco, tmp_path / "run", 1, *QUICK), "--backbone-weights", garbage, check=False
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: cannot read the backbone weights {garbage}")


# ---------------------------------------------------------------- item 8: video
def write_video(path, frames=8, fourcc="MJPG"):
    """A small video of distinct frames written by OpenCV itself."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5, (96, 64))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    return path


def frames_in(path):
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    return count


def test_a_video_output_without_a_video_suffix_is_refused_before_any_work(tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi")
    code = detect.main(
        [
            "--weights",
            str(tmp_path / "not_even_loaded.pt"),
            "--input",
            str(video),
            "--output",
            str(tmp_path / "clip_out.jpg"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith(f"error: the input {video} is a video: --output must be a video file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]


def test_a_video_writer_that_cannot_open_is_a_named_error(synthetic_coco, tmp_path, capsys, monkeypatch):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    video = write_video(tmp_path / "clip.avi")
    atomic_write(tmp_path / "out.avi", lambda f: f.write(b"an earlier result"), claim=True)  # ssdfast's own
    monkeypatch.setitem(detect.VIDEO_CODECS, ".avi", "H264")  # an encoder this OpenCV build does not have
    code = detect.main(["--weights", str(weights), "--input", str(video), "--output", str(tmp_path / "out.avi")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith(f"error: cannot write the video {tmp_path / 'out.avi'}: OpenCV has no encoder")
    assert (tmp_path / "out.avi").read_bytes() == b"an earlier result" and not list(tmp_path.glob(".*.tmp*"))


def test_a_truncated_video_reports_frames_read_of_frames_announced(synthetic_coco, tmp_path, capsys):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    whole = write_video(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    announced, readable = int(cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT)), frames_in(cut)
    assert announced == 8 and 0 < readable < 8  # the oracle: OpenCV reading the cut file itself
    code = detect.main(["--weights", str(weights), "--input", str(whole), "--output", str(tmp_path / "a.mp4")])
    assert code == 0 and "frames read" not in capsys.readouterr().err
    code = detect.main(["--weights", str(weights), "--input", str(cut), "--output", str(tmp_path / "b.mp4")])
    err = capsys.readouterr().err
    assert code == 0 and f"warning: {cut}: {readable} of 8 frames read (the file is truncated or damaged)" in err
    assert frames_in(tmp_path / "b.mp4") == readable == len(json.loads((tmp_path / "b.json").read_text()))
