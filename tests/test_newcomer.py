"""What a newcomer reads and runs first agrees with the repository: every install line keeps the built
extension, `make install EXTRAS=...` installs exactly an extra's packages, what `make demo` writes is
git-ignored, and the AP range the README and docs/quality.md promise is the one the results file holds."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
# Where a user is told how to install: the docs, the build files, and the messages of the code.
INSTRUCTIONS = [
    ROOT / "README.md",
    ROOT / "Dockerfile",
    ROOT / "setup.py",
    ROOT / "Makefile",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "ssdfast").rglob("*.py")),
    *sorted((ROOT / "tools").glob("*.py")),
]


def installs_this_project(command: str) -> bool:
    """Whether a `pip install ...` command installs ssdfast itself (., .[extra], -e ., the project's name),
    which builds ssdfast._C: not `pip install onnx` or `pip install -r requirements.txt`."""
    words = command.replace('"', " ").replace("'", " ").split()
    return any(re.fullmatch(r"\.(\[[\w,-]+\])?|ssdfast(\[[\w,-]+\])?", word) for word in words)


def test_every_install_line_keeps_the_built_extension():
    """`pip install -e .[export]` built ssdfast._C again in an isolated environment (a torch of its own,
    no FORCE_CUDA): minutes, and the CUDA kernels gone. Every line that installs this project builds
    against the torch in use (--no-build-isolation) or goes through the Makefile."""
    commands = [
        (path.relative_to(ROOT), n, match.group(0))
        for path in INSTRUCTIONS
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for match in re.finditer(r"pip install[^`\n\"')]*", line)
    ]
    assert len(commands) >= 5  # README, Dockerfile, setup.py, Makefile: the search finds them
    ours = [(where, n, cmd) for where, n, cmd in commands if installs_this_project(cmd)]
    assert ours, "no install line of this project found"
    rebuilding = [f"{where}:{n}: {cmd}" for where, n, cmd in ours if "--no-build-isolation" not in cmd]
    assert not rebuilding, rebuilding
    assert installs_this_project("pip install -e .[export]") and not installs_this_project("pip install onnx")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_extras_installs_the_extras_packages_and_builds_nothing(tmp_path):
    """`make install EXTRAS=...` against a venv whose build is done and whose python only reports what pip
    is asked: it installs pyproject.toml's packages of those extras, by name, and builds nothing."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && {{ echo "pip: $*"; exit 0; }}\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    (venv / ".deps").touch()
    (venv / ".built").touch()  # newer than setup.py, pyproject.toml and csrc/: nothing to build

    def make(*args):
        return subprocess.run(
            ["make", "--no-print-directory", "install", f"VENV={venv}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    done = make("EXTRAS=export,fast-eval")
    assert done.returncode == 0, done.stderr
    pip = [line for line in done.stdout.splitlines() if line.startswith("pip: ")]
    assert pip == [f"pip: -m pip install --quiet {' '.join(extras['export'] + extras['fast-eval'])}"]
    assert "-e" not in pip[0].split() and "setup.py" not in done.stdout
    plain = make()
    assert plain.returncode == 0 and "pip:" not in plain.stdout  # no EXTRAS: nothing installed
    wrong = make("EXTRAS=exprot")
    assert wrong.returncode != 0 and "EXTRAS: no extra 'exprot' in pyproject.toml" in wrong.stderr
    assert "pip:" not in wrong.stdout


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_what_make_demo_writes_is_git_ignored():
    for path in (
        "demo_output/model/last.pt",
        "demo_output/data/annotations/instances_val2017.json",
        ".venv/bin/python",
    ):
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], timeout=30)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_the_demo_ap_range_in_the_readme_and_quality_page_is_the_results_files():
    """The current recipe's row (docs/quality.md names its file) gives the range both pages promise."""
    quality = (ROOT / "docs" / "quality.md").read_text()
    cited = re.search(r"current recipe and\s+augmentation gave .*?`benchmarks/results/([\w.-]+\.json)`", quality, re.S)
    summary = json.loads((ROOT / "benchmarks" / "results" / cited.group(1)).read_text())["summary"]
    ap50 = f"{summary['AP50']['min']:.2f}-{summary['AP50']['max']:.2f}"
    ap = f"{summary['AP']['min']:.2f}-{summary['AP']['max']:.2f}"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"**AP50 {ap50}** (AP {ap} over 5 seeds)" in readme
    low, high = ap50.split("-")
    assert f"**AP50 between about {low} and {high}** (AP {ap})" in " ".join(quality.split())
    assert "(128 steps) AP50\n" not in quality  # the sentence cut off mid-way


def test_a_stopped_demo_says_how_to_resume_and_a_failed_step_says_it_failed(monkeypatch):
    import demo  # tools/demo.py (on pytest's path: pyproject.toml)

    from ssdfast.machinery.exit_codes import EXIT_ERROR, EXIT_STOPPED

    for code, expected in [(EXIT_STOPPED, "run `make demo` again to resume"), (EXIT_ERROR, "step failed (exit 1)")]:
        monkeypatch.setattr(demo.subprocess, "run", lambda cmd, cwd, code=code: subprocess.CompletedProcess(cmd, code))
        with pytest.raises(SystemExit) as stopped:
            demo.run(["python", "tools/train.py"])
        assert expected in str(stopped.value.code), stopped.value.code
