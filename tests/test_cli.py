"""The tools' command lines answer at once: --help and usage errors come before PyTorch is imported,
and --help shows each flag's one true default (or none) and the choices where there are choices."""

import argparse
import contextlib
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

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


TOOLS = ("train", "eval", "detect", "export", "demo")


def parser_of(tool: str) -> argparse.ArgumentParser:
    """The parser tools/<tool>.py's get_args builds, however it builds it: caught as it parses."""
    caught = []

    def catch(parser, *args, **kwargs):
        caught.append(parser)
        raise SystemExit(0)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), contextlib.suppress(SystemExit):
        importlib.import_module(tool).get_args([])
    return caught[0]


def help_entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """--help's text, one entry per flag ("--device": its help, wrapped lines joined), parsed from the text
    the user sees: an entry starts with the flag names at two spaces, its help follows."""
    entries, current = {}, None
    for line in parser.format_help().splitlines():
        flag = re.match(r"  (-{1,2}[\w-]+)", line)
        if flag:
            current = flag.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {name: " ".join(text.split()) for name, text in entries.items()}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_flag_shows_one_true_default_or_none(tool):
    parser = parser_of(tool)
    entries = help_entries(parser)
    flags = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]
    assert {a.option_strings[0] for a in flags} <= set(entries)  # every flag found in the text
    for action in flags:
        text = entries[action.option_strings[0]]
        assert text.count("(default") <= 1, f"{tool}: two defaults: {text}"
        assert "(default: None)" not in text, f"{tool}: {text}"
        if action.required:
            assert "(default" not in text, f"{tool}: a required flag shows a default: {text}"
        shown = re.search(r"\(default: ([^)]*)\)", text)
        if shown and action.nargs != 0 and shown.group(1) == str(action.default):
            assert parser.get_default(action.dest) == action.default  # what is shown is what parsing gives
    # Switches that set one destination (--with-nms/--no-nms, --channels-last/--no-channels-last): at most
    # one claims to be the default, and the one that does is what the parser gives without either.
    by_dest = {}
    for action in flags:
        if action.nargs == 0 and not isinstance(action, argparse._HelpAction):
            by_dest.setdefault(action.dest, []).append(action)
    for dest, switches in by_dest.items():
        claims = [a for a in switches if "(default" in entries[a.option_strings[0]]]
        assert len(claims) <= 1, f"{tool}: {[a.option_strings[0] for a in claims]} all claim the default"
        for action in claims:
            text = entries[action.option_strings[0]]
            if "(default)" in text:  # "this switch is the default"
                assert parser.get_default(dest) == action.const, f"{tool}: {text}"
