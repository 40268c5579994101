"""A device this machine lacks, an input that is no camera, and a bad argument of the Python API are each one
clear line (or one exception) naming what was given, in every tool that takes them, before any work.

The tools run in this process (their main(), as the command line calls it): the check comes before any
model or data is read, so each run takes a fraction of a second. What the machine has is read from
PyTorch itself, the oracle for the "this machine has ..." half of each line.
"""

import demo  # tools/*.py (pyproject.toml puts tools/ on pytest's path)
import detect
import eval as eval_tool
import numpy as np
import pytest
import torch
import train
from PIL import Image

import ssdfast
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.machinery.exit_codes import EXIT_ERROR
from ssdfast.machinery.runtime import check_device, pick_device
from ssdfast.models import build_model


def missing_gpu() -> str:
    """A CUDA device this machine does not have: any on a machine without one, else the one past the last."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def what_this_machine_has() -> list[str]:
    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0))]


def tool_argv(tool: str, tmp_path, device: str) -> list[str]:
    """A command line of `tool` that would do real work, but for its --device."""
    return {
        "train": ["--data-path", str(tmp_path / "data"), "--save-folder", str(tmp_path / "out")],
        "eval": ["--data-path", str(tmp_path / "data"), "--weights", str(tmp_path / "w.pt")],
        "detect": ["--weights", str(tmp_path / "w.pt"), "--input", str(tmp_path), "--output", str(tmp_path / "out")],
        "demo": ["--out", str(tmp_path / "out")],
    }[tool] + ["--device", device]


RUN = {"train": train.run, "eval": eval_tool.main, "detect": detect.main, "demo": demo.main}


@pytest.mark.parametrize("tool", sorted(RUN))
@pytest.mark.parametrize("device", ["missing gpu", "tpu", "mps", "cuda:x", "cuda:-1"])
def test_a_device_this_machine_lacks_is_one_line_in_every_tool(tool, device, tmp_path, capsys):
    device = missing_gpu() if device == "missing gpu" else device
    code = RUN[tool](tool_argv(tool, tmp_path, device))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_ERROR and len(err) == 1, err
    line = err[0]
    assert line.startswith(f"error: --device {device}: "), line
    has = line.split("this machine has ", 1)[1] if "this machine has " in line else line.split("it has ", 1)[1]
    named = [word.strip(",") for word in has.split() if word.startswith(("cpu", "cuda:"))]
    assert named == what_this_machine_has(), line
    assert not (tmp_path / "out").exists()  # no work done: nothing written


def test_the_devices_this_machine_has_are_taken():
    assert pick_device("cpu") == torch.device("cpu") and check_device(None) is None
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert pick_device("cuda") == torch.device("cuda", torch.cuda.current_device())  # the index made explicit


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An SSDLite with random weights: every box scores about 0.4 (BatchNorm's initial statistics)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.pt"
    model = build_model("ssdlite", num_classes=3)
    names = ["circle", "square", "triangle"]
    meta = {
        "model_name": "ssdlite300_mobilenetv2",
        "num_classes": 3,
        "category_names": names,
        "category_ids": [1, 2, 3],
    }
    save_checkpoint(path, {"model": model.state_dict(), **meta, "epoch": 0})
    return path


@pytest.mark.parametrize(
    "tool, flag",
    [("detect", "--input"), ("detect", "--output"), ("eval", "--weights"), ("export", "--output")],
)
def test_a_path_the_system_refuses_is_one_line_naming_it(tool, flag, weights, tmp_path, capsys):
    """A name longer than the file system takes (Path.is_file() raises on ENAMETOOLONG rather than saying
    False): the system's reason and the name, shortened, on one line (user_errors.error_line)."""
    import export

    long = str(tmp_path / ("x" * 300))
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    argv = {
        "detect": ["--weights", str(weights), "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")],
        "eval": ["--weights", str(weights), "--data-path", str(tmp_path)],
        "export": ["--weights", str(weights), "--format", "onnx", "--output", str(tmp_path / "m.onnx")],
    }[tool]
    argv[argv.index(flag) + 1] = long + (".jpg" if flag == "--input" else ".onnx" if tool == "export" else "")
    argv += [] if tool == "export" else ["--device", "cpu"]  # export runs on the CPU only
    code = {"detect": detect.main, "eval": eval_tool.main, "export": export.main}[tool](argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_ERROR and len(err) == 1, err
    assert err[0].startswith("error: File name too long: ") and "x" * 50 in err[0] and len(err[0]) < 260, err


@pytest.mark.parametrize(
    "spec, words",
    [
        ("²", "no input images found at ²"),  # Python's isdigit() takes it; int() does not
        ("12345678901234567890", "--input 12345678901234567890: a camera index is at most 99"),
        ("100", "--input 100: a camera index is at most 99"),  # OpenCV would read 100 as a backend
    ],
)
def test_an_input_that_is_no_camera_is_one_line(spec, words, weights, tmp_path, capsys):
    code = detect.main(
        ["--weights", str(weights), "--input", spec, "--output", str(tmp_path / "out.mp4"), "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_ERROR and len(err) == 1 and err[0].startswith(f"error: {words}"), err


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"score_threshold": 1.0}, ValueError, "score_threshold: must be a finite number in [0, 1), got 1.0"),
        ({"score_threshold": -0.1}, ValueError, "score_threshold: must be"),
        ({"score_threshold": "0.3"}, TypeError, "score_threshold: must be a number, got str"),
        ({"nms_threshold": float("nan")}, ValueError, "nms_threshold: must be a finite number in (0, 1], got nan"),
        ({"nms_threshold": 0}, ValueError, "nms_threshold: must be"),
        ({"max_det": 0}, ValueError, "max_det: must be an integer in [1, 100000], got 0"),
        ({"max_det": 2.5}, ValueError, "max_det: expected an integer"),
        ({"max_det": True}, TypeError, "max_det: must be a number, got bool"),
        ({"device": "tpu"}, ValueError, "device tpu: ssdfast runs on cpu, cuda or cuda:N; this machine has cpu"),
        ({"device": missing_gpu()}, ValueError, f"device {missing_gpu()}: "),
    ],
)
def test_load_names_its_bad_argument(weights, kwargs, error, words):
    with pytest.raises(error) as caught:
        ssdfast.load(weights, **kwargs)
    assert str(caught.value).startswith(words), caught.value


def test_load_takes_numpy_numbers_and_the_ends_of_the_ranges(weights):
    detector = ssdfast.load(
        weights, device="cpu", score_threshold=np.float32(0.0), nms_threshold=1, max_det=np.int64(7)
    )
    assert (
        detector.max_det == 7 and detector.core.policy.score_threshold == 0 and detector.core.policy.nms_threshold == 1
    )
    with pytest.raises(TypeError, match="path must be a file name"):
        ssdfast.load(None)


@pytest.mark.parametrize(
    "batch_size, error, words",
    [
        (-1, ValueError, "batch_size: must be an integer in [1, 4096], got -1"),  # returned [] silently before
        (0, ValueError, "batch_size: must be an integer in [1, 4096], got 0"),  # range() arg 3 must not be zero
        (2.5, ValueError, "batch_size: expected an integer"),
        (None, TypeError, "batch_size: must be a number, got NoneType"),
    ],
)
def test_predict_names_a_bad_batch_size(weights, batch_size, error, words):
    detector = ssdfast.load(weights, device="cpu")
    with pytest.raises(error) as caught:
        detector.predict(np.zeros((20, 30, 3), np.uint8), batch_size=batch_size)
    assert str(caught.value).startswith(words), caught.value


@pytest.mark.parametrize(
    "source, words",
    [
        (Image.new("RGB", (0, 0)), "source: a PIL image of 0x0 pixels"),  # a reshape error before
        (Image.new("L", (4, 0)), "source: a PIL image of 4x0 pixels"),
        (np.zeros((0, 0), np.uint8), "source: a numpy image of shape (0, 0) has no pixels"),
        (torch.zeros(3, 5, 0, dtype=torch.uint8), "source: a tensor image of shape [3, 5, 0] has no pixels"),
    ],
)
def test_an_image_without_pixels_is_named(weights, source, words):
    detector = ssdfast.load(weights, device="cpu")
    with pytest.raises(ValueError) as caught:
        detector.predict(source)
    assert str(caught.value).startswith(words), caught.value


def test_result_save_names_a_bad_path(weights, tmp_path):
    result = ssdfast.load(weights, device="cpu").predict(np.zeros((20, 30, 3), np.uint8))[0]
    with pytest.raises(TypeError, match="path must be a file name .* got NoneType"):
        result.save(None)
    with pytest.raises(ValueError, match="is a folder"):
        result.save(tmp_path)
