"""Output paths of the tools: checked before the long work starts, never one output over another.

A run that can only fail at the end (an unwritable folder, a name clash) should fail at the start,
before hours of training or evaluation are spent.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def writable_folder(folder: str | Path, what: str) -> Path:
    """Create `folder` (and parents) and prove it takes files; ValueError naming it otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write the {what} {folder}: {error.strerror or error}") from error
    return folder


def writable_file(path: str | Path, what: str) -> Path:
    """A file path whose folder exists and is writable, and which is not a folder itself."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise ValueError(f"{what} {path} is a folder: give a file name")
    writable_folder(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


def distinct(paths: dict[str, Path]) -> dict[str, Path]:
    """The outputs of one run must all differ (no output may overwrite another)."""
    seen: dict[Path, str] = {}
    for what, path in paths.items():
        key = Path(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"the {what} and the {seen[key]} would both be written to {path}: choose other names")
        seen[key] = what
    return paths
