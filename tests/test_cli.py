"""The tools' command lines answer at once: --help and usage errors come before PyTorch is imported,
and --help shows every flag's default and the choices where there are choices."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "cv2", "pycocotools")
# A fresh interpreter (this one has PyTorch loaded): parse a command line, then --help, then list what
# of HEAVY got imported.
PARSE = """
import contextlib, io, sys
import {tool} as tool
tool.get_args({argv!r})
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    tool.get_args(["--help"])
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "tool,argv,heavy",
    [
        ("train", ["--data-path", "d"], HEAVY),
        ("eval", ["--data-path", "d", "--weights", "w"], HEAVY),
        # detect draws and reads video with OpenCV in every helper, so it imports it at the top (0.1 s).
        ("detect", ["--weights", "w", "--input", "i", "--output", "o"], ("torch", "torchvision", "pycocotools")),
        ("export", ["--weights", "w", "--format", "onnx", "--output", "o.onnx"], HEAVY),
        ("demo", [], HEAVY),
    ],
)
def test_parsing_the_command_line_imports_no_heavy_library(tool, argv, heavy):
    tools_first = os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])  # `import train`
    done = subprocess.run(
        [sys.executable, "-c", PARSE.format(tool=tool, argv=argv, heavy=heavy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": tools_first},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_help_shows_defaults_and_choices():
    done = subprocess.run(
        [sys.executable, "tools/train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert done.returncode == 0
    assert "number of epochs (default: 65)" in text
    assert "{ssd,ssdlite,ssd300_resnet50,ssdlite300_mobilenetv2}" in text
    bad = subprocess.run(
        [sys.executable, "tools/train.py", "--data-path", "d", "--model", "yolo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "invalid choice: 'yolo'" in bad.stderr
