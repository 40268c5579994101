"""The tools' command lines answer at once: --help and usage errors come before PyTorch is imported,
and --help shows every flag's default and the choices where there are choices."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARSE = """
import sys
sys.path.insert(0, "tools")
import {tool} as tool
tool.get_args({argv!r})
print(sorted(m for m in ("torch", "torchvision", "cv2", "pycocotools") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "tool,argv", [("train", ["--data-path", "d"]), ("eval", ["--data-path", "d", "--weights", "w"])]
)
def test_parsing_the_command_line_imports_no_heavy_library(tool, argv):
    done = subprocess.run(
        [sys.executable, "-c", PARSE.format(tool=tool, argv=argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
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
