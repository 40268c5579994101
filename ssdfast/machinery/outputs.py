"""Output files of the tools: checked before the long work starts, written atomically at the end.

A run that can only fail at the end (an unwritable folder, a name clash) should fail at the start,
before hours of training or evaluation are spent. Every file a tool writes goes through
atomic_output: a temporary beside the target, renamed over it only once complete, so a kill or a
full disk at any moment leaves the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class OutputError(RuntimeError):
    """An output file that cannot be written; the message names it, the reason and what was kept."""


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


def _umask() -> int:
    """The process umask, read from /proc (setting and resetting it would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _write_error(path: Path, what: str, error: BaseException, needed: int) -> OutputError:
    """One message for every way a write fails (full disk, read-only or vanished folder)."""
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
    if free is None:
        reason = "the folder does not exist (any more)"
    elif getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed:
        reason = f"no space left ({needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)"
    else:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    intact = "the previous one is intact" if path.exists() else "no earlier one exists"
    return OutputError(f"cannot write {what} {path.name} to {path.parent}: {reason}; {intact}")


def _is_write_failure(error: BaseException) -> bool:
    """OSError, or torch.save's report of a failed write: its zip writer (inline_container.cc) turns the
    OS error into a RuntimeError ("PytorchStreamWriter failed writing file ...", "unexpected pos ...")."""
    text = str(error)
    return isinstance(error, OSError) or (
        isinstance(error, RuntimeError)
        and any(
            key in text for key in ("PytorchStreamWriter", "inline_container", "failed writing", "file write failed")
        )
    )


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to the disk: a rename survives a power loss only after both."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path, what: str = "file", needed: int = 0, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (.NAME.RANDOM.tmp); when the block ends normally it replaces
    `path`: fsync, the usual permissions, rename, fsync of the folder. An exception or signal inside the
    block leaves `path` as it was and no temporary behind.

    needed: bytes the write takes (checked before it starts: both files must fit until the rename).
    keep_suffix: the temporary ends in NAME's suffix too, for writers and readers that go by it (.onnx).
    Failures raise OutputError naming `what`, the folder, the reason and whether an older file is intact.
    The folder is not created here: one that disappears during a run is an error, not recreated.
    """
    path = Path(path)
    try:
        if needed and shutil.disk_usage(path.parent).free < needed:
            raise OSError(errno.ENOSPC, "no space left on device")
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if keep_suffix else "")
        )
        os.close(fd)
    except OSError as error:
        raise _write_error(path, what, error, needed) from error
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a shared run's teammates must read it
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_write_failure(error):
            raise _write_error(path, what, error, needed) from error
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], what: str = "file", needed: int = 0) -> None:
    """write(binary file) into `path` through atomic_output (see there)."""
    with atomic_output(path, what, needed) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json_atomic(path: str | Path, value, what: str = "file", indent: int | None = None) -> bytes:
    """`value` as JSON into `path` through atomic_output; returns the bytes written."""
    data = json.dumps(value, indent=indent).encode()
    atomic_write(path, lambda f: f.write(data), what, needed=len(data))
    return data


def remove_stale_temporaries(folder: str | Path, pattern: str = ".*.pt.*.tmp") -> list[Path]:
    """Delete the temporaries of writes that a kill interrupted (default: checkpoints, .NAME.pt.*.tmp).
    Only for the owner of the folder (a running training's may be another run's write in progress)."""
    stale = sorted(Path(folder).glob(pattern))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
