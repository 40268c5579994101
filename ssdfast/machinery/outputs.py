"""Output files of the tools: checked before the long work starts, written atomically at the end.

A run that can only fail at the end (an unwritable folder, a name clash) should fail at the start,
before hours of training or evaluation are spent. Every file a tool writes goes through
atomic_output: a temporary beside the target, renamed over it only once complete, so a kill or a
full disk at any moment leaves the previous file or the new one, never a torn one. Files that must
change together (eval's detections and metrics) go through write_together: both or neither.

check_outputs is the one rule every tool applies before any work: no output is, or resolves to, one of
the run's inputs, none lies inside an input folder, no input lies inside an output folder, and an
existing file is replaced only if ssdfast wrote it. How ssdfast knows: every file the tools write with
claim=True is listed, with its size and sha256, in the folder's ledger OWN_FILES; a file whose content
the ledger does not list (a user's file, or an output edited since) is refused. The cost: one read
of each output to hash it when it is written, and again when a rerun replaces it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ssdfast.machinery.user_errors import parse_json


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
        wanted = f"{needed / 2**20:.1f} MiB needed, " if needed else ""
        reason = f"no space left ({wanted}{free / 2**20:.1f} MiB free)"
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


def _temporary(path: Path, what: str, needed: int, keep_suffix: bool = False) -> Path:
    """An empty temporary beside `path` (.NAME.RANDOM.tmp[.SUFFIX]), once `needed` bytes are free."""
    try:
        if needed and shutil.disk_usage(path.parent).free < needed:
            raise OSError(errno.ENOSPC, "no space left on device")
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if keep_suffix else "")
        )
        os.close(fd)
    except OSError as error:
        raise _write_error(path, what, error, needed) from error
    return Path(tmp)


def _seal(tmp: Path, path: Path, claim: bool) -> None:
    """A complete temporary made ready to become `path`: on the disk, the usual permissions, and (claim)
    listed in the folder's ledger under path's name before the rename, so it is never ssdfast's unlisted."""
    _fsync(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a shared run's teammates must read it
    if claim:
        _claim(path, tmp)


@contextmanager
def atomic_output(
    path: str | Path, what: str = "file", needed: int = 0, keep_suffix: bool = False, claim: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside `path` (.NAME.RANDOM.tmp); when the block ends normally it replaces
    `path`: fsync, the usual permissions, rename, fsync of the folder. An exception or signal inside the
    block leaves `path` as it was and no temporary behind.

    needed: bytes the write takes (checked before it starts: both files must fit until the rename).
    keep_suffix: the temporary ends in NAME's suffix too, for writers and readers that go by it (.onnx).
    claim: list the file in its folder's ledger (check_outputs lets a rerun replace it).
    Failures raise OutputError naming `what`, the folder, the reason and whether an older file is intact.
    The folder is not created here: one that disappears during a run is an error, not recreated.
    """
    path = Path(path)
    tmp = _temporary(path, what, needed, keep_suffix)
    try:
        yield tmp
        _seal(tmp, path, claim)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if _is_write_failure(error):
            raise _write_error(path, what, error, needed) from error
        raise


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], what: str = "file", needed: int = 0, claim: bool = False
) -> None:
    """write(binary file) into `path` through atomic_output (see there)."""
    with atomic_output(path, what, needed, claim=claim) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json_atomic(
    path: str | Path, value, what: str = "file", indent: int | None = None, claim: bool = False
) -> bytes:
    """`value` as JSON into `path` through atomic_output; returns the bytes written."""
    data = json.dumps(value, indent=indent).encode()
    atomic_write(path, lambda f: f.write(data), what, needed=len(data), claim=claim)
    return data


def remove_stale_temporaries(folder: str | Path, pattern: str = ".*.pt.*.tmp") -> list[Path]:
    """Delete the temporaries of writes that a kill interrupted (default: checkpoints, .NAME.pt.*.tmp).
    Only for the owner of the folder (a running training's may be another run's write in progress)."""
    stale = sorted(Path(folder).glob(pattern))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


# --- which files ssdfast wrote: the ledger ---------------------------------------------------------------

OWN_FILES = ".ssdfast-outputs.jsonl"  # per folder, a line per claimed write: {"name", "size", "sha256"}
KEPT_PER_NAME = 4  # entries per name a compaction keeps (a claim is listed before its rename: a few pending)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """flock on the folder itself: one ledger update at a time (the kernel drops it if the process dies)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ledger(folder: Path) -> list[dict]:
    """The entries of folder's ledger (a line that does not parse is skipped; a ledger that is not a
    regular file counts as empty)."""
    path = folder / OWN_FILES
    if path.is_symlink() or not path.is_file():
        return []
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = parse_json(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and {"name", "size", "sha256"} <= entry.keys():
            entries.append(entry)
    return entries


def is_own(path: str | Path, ledger: list[dict] | None = None) -> bool:
    """Did ssdfast write `path` as it is now? Its folder's ledger lists its name with its size and sha256.
    ledger: that folder's _ledger, when the caller has read it already."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    size = path.stat().st_size
    entries = _ledger(path.parent) if ledger is None else ledger
    digests = {e["sha256"] for e in entries if e["name"] == path.name and e["size"] == size}
    return bool(digests) and _sha256(path) in digests


def _claim(target: Path, content: Path) -> None:
    """List `content` (a complete temporary) in the ledger of target's folder under target's name.
    One O_APPEND write per line; a short write (a full disk) is cut back, so no torn line stays."""
    line = json.dumps({"name": target.name, "size": content.stat().st_size, "sha256": _sha256(content)}) + "\n"
    with _folder_locked(target.parent):
        fd = os.open(target.parent / OWN_FILES, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            before = os.fstat(fd).st_size
            if before and os.pread(fd, 1, before - 1) != b"\n":  # a line torn by a kill: end it first
                line = "\n" + line
            try:
                if os.write(fd, line.encode()) != len(line.encode()):
                    raise OSError(errno.ENOSPC, "no space left on device")
            except OSError:
                os.ftruncate(fd, before)
                raise
        finally:
            os.close(fd)
        _compact(target.parent)


def _compact(folder: Path) -> None:
    """Rewrite the ledger when it holds far more lines than files: the last KEPT_PER_NAME entries of each
    file still there. Called with the folder locked; a failure leaves the longer ledger, as valid."""
    entries = _ledger(folder)
    names = {e["name"] for e in entries}
    if len(entries) <= KEPT_PER_NAME * len(names) + 64:
        return
    kept: dict[str, list[dict]] = {}
    for entry in entries:
        if (folder / entry["name"]).is_file():
            kept.setdefault(entry["name"], []).append(entry)
    data = "".join(json.dumps(e) + "\n" for group in kept.values() for e in group[-KEPT_PER_NAME:]).encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{OWN_FILES}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, folder / OWN_FILES)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


# --- the rule: no output lands on an input or on a file ssdfast did not write ----------------------------

Named = Iterable[tuple[str, "str | Path | None"]]  # (what it is, its path); None: not given


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file `path` leads to (a hard link shares them), None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(
    files: Named = (),
    folders: Named = (),
    *,
    inputs: Named = (),
    input_folders: Named = (),
    only_own: bool = True,
) -> None:
    """The rule every tool applies to its outputs before any work; ValueError naming both paths:
    - no output file is an input: the same path once symlinks and '..' are resolved, or the same file
      (st_dev and st_ino: a hard link);
    - no output (file or folder) is, or lies inside, an input folder (a dataset, an image folder);
    - no input lies inside an output folder (a tool may replace anything it writes in its folder);
    - an output file that exists was written by ssdfast (is_own): a user's file, or an output edited since,
      is never replaced. only_own=False leaves this out (train: the save folder is the run's own, resumed
      from what it holds).
    Then it completes or clears what an interrupted write of these files left (finish_interrupted).
    Inputs that do not exist are left to the tool (it says they are missing)."""
    files = [(what, Path(p)) for what, p in files if p is not None]
    folders = [(what, Path(p)) for what, p in folders if p is not None]
    given = [(what, Path(p)) for what, p in inputs if p is not None and Path(p).is_file()]
    in_folders = [(what, Path(p).resolve()) for what, p in input_folders if p is not None and Path(p).is_dir()]
    by_path = {p.resolve(): (what, p) for what, p in given}
    by_identity = {_identity(p): (what, p) for what, p in given}
    for what, path in files:
        if path.name == OWN_FILES:
            raise ValueError(
                f"the {what} {path} would replace ssdfast's list of the files it wrote: choose another name"
            )
        same = by_path.get(path.resolve())
        if same:
            raise ValueError(f"the {what} {path} would overwrite the {same[0]} {same[1]}: choose another output")
        same = by_identity.get(_identity(path) or (-1, -1))
        if same:
            raise ValueError(
                f"the {what} {path} would overwrite the {same[0]} {same[1]} (the same file, a hard link): "
                "choose another output"
            )
    for what, path in files + folders:
        for in_what, folder in in_folders:
            if _inside(path.resolve(), folder):
                raise ValueError(f"the {what} {path} lies inside the {in_what} {folder}: write it elsewhere")
    for what, folder in folders:
        folder = folder.resolve()
        for in_what, path in given + in_folders:
            if _inside(path.resolve(), folder):
                raise ValueError(
                    f"the {in_what} {path} lies inside the {what} {folder}, which the run writes into: "
                    "move it, or choose another output folder"
                )
    finish_interrupted(path for _, path in files)
    ledgers: dict[Path, list[dict]] = {}
    for what, path in files:
        if not os.path.lexists(path) or not only_own:
            continue
        if path.parent not in ledgers:
            ledgers[path.parent] = _ledger(path.parent)
        if not is_own(path, ledgers[path.parent]):
            kind = "is a symbolic link" if path.is_symlink() else "is a folder" if path.is_dir() else None
            raise ValueError(
                f"the {what} {path} exists and {kind or 'was not written by ssdfast (or was changed since)'}: "
                "remove it or choose another output"
            )


def run_inputs(*, weights=(), data_path=None, annotations=(), image_folders=()) -> dict[str, list]:
    """A run's inputs as check_outputs takes them (inputs=, input_folders=): weight files (an exported
    model's with the files that belong to it: OpenVINO's .bin), the dataset (--data-path: a folder, or a
    data.yaml and its folder), annotation files and image folders; None entries (flags not given) and
    names that are not files (imagenet, none) drop out there."""
    from ssdfast.deploy.formats import format_of  # torch-free: the formats' files

    weight_files = [f for w in weights for f in (format_of(w).files(w) if w and format_of(w) else [w])]
    inputs = [("weights", w) for w in weight_files] + [("annotation file", a) for a in annotations]
    folders = [("image folder", f) for f in image_folders]
    if data_path is not None:
        path = Path(data_path)
        inputs.append(("dataset file", path if path.is_file() else None))
        folders.append(("dataset folder", path.parent if path.is_file() else path))
    return {"inputs": inputs, "input_folders": folders}


# --- several files as one: write_together, and the next run's completion --------------------------------


def _commit_note(path: Path) -> Path:
    """Where write_together lists its renames while it does them: .NAME.commit.json beside the first file."""
    return path.with_name(f".{path.name}.commit.json")


def write_together(files: list[tuple[str | Path, str, bytes]]) -> None:
    """Replace several files of one folder as one: [(path, what, content)]. Each is written to a
    temporary and claimed (ledger); then a commit note lists the renames; then the renames; then the note
    goes. A stop before the note leaves the previous files (temporaries that the next check_outputs
    clears), a stop after it a note that the next check_outputs completes: the previous set or the new
    one, never a file deleted first. Failures before the note raise OutputError; nothing changed."""

    def fill(tmp: Path, data: bytes) -> None:
        tmp.write_bytes(data)

    _together([(Path(p), what, len(data), data) for p, what, data in files], fill)


@contextmanager
def atomic_outputs(paths: list[str | Path], what: str) -> Iterator[list[Path]]:
    """atomic_output for a file and the files that belong to it (OpenVINO's .xml and its .bin), claimed:
    yields their temporaries, the first beside paths[0] with its suffix (.NAME.RANDOM.tmp.SUFFIX), the
    others named as the first with their own suffix (a runtime finds them by that name). When the block
    ends normally they replace `paths` as one (write_together's commit note); on failure none is left."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        with atomic_output(paths[0], what, keep_suffix=True, claim=True) as tmp:
            yield [tmp]
        return
    first = _temporary(paths[0], what, 0, keep_suffix=True)
    temporaries = [first, *(first.with_suffix(p.suffix) for p in paths[1:])]
    try:
        yield temporaries
        _together([(p, what, 0, tmp) for p, tmp in zip(paths, temporaries)], lambda tmp, done: os.replace(done, tmp))
    except BaseException as error:
        if _is_write_failure(error):
            raise _write_error(paths[0], what, error, 0) from error
        raise
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)


def _together(files: list[tuple[Path, str, int, object]], fill: Callable[[Path, object], None]) -> None:
    """write_together's steps for [(path, what, bytes needed, content)]: fill(temporary, content) makes each
    temporary (writes the bytes, or moves a finished file in), then seal and claim, the note, the renames."""
    folder = files[0][0].parent
    if any(p.parent != folder for p, *_ in files):
        raise ValueError("write_together: the files must share a folder")
    temporaries: list[Path] = []
    try:
        for path, what, needed, content in files:
            tmp = _temporary(path, what, needed)
            temporaries.append(tmp)
            try:
                fill(tmp, content)
                _seal(tmp, path, claim=True)
            except OSError as error:
                raise _write_error(path, what, error, needed) from error
        note = _commit_note(files[0][0])
        renames = [[tmp.name, path.name] for tmp, (path, *_) in zip(temporaries, files)]
        write_json_atomic(note, renames, f"commit note of the {files[0][1]}")
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    _commit(note, {path.name for path, *_ in files})


def _commit(note: Path, targets: set[str]) -> None:
    """Do the renames a commit note lists (those not done yet), then delete it. Every file it renames to
    must be one of `targets` (the names of the outputs being finished): a planted note cannot move a
    temporary over any other file, the run's weights say."""
    try:
        renames = parse_json(note.read_text())
        assert isinstance(renames, list) and all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in pair)
            and pair[0].startswith(f".{pair[1]}.")
            and pair[0].endswith(".tmp")
            and pair[1] in targets
            for pair in renames
        )
    except (OSError, ValueError, AssertionError):
        raise ValueError(f"{note} is not a commit note ssdfast wrote: remove it") from None
    for tmp, name in renames:
        source = note.parent / tmp
        if source.is_file() and not source.is_symlink():
            os.replace(source, note.parent / name)
    _fsync(note.parent)
    note.unlink()
    _fsync(note.parent)


TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")  # mkstemp's in _temporary


def finish_interrupted(paths: Iterable[str | Path]) -> None:
    """What killed writes of `paths` left: their commit notes completed (write_together), then their
    temporaries deleted (.NAME.RANDOM.tmp, and the notes' own). Each folder is listed once."""
    paths = [Path(p) for p in paths]
    by_folder: dict[Path, set[str]] = {}
    for path in paths:
        note = _commit_note(path)
        if note.is_file() and not note.is_symlink():
            _commit(note, {p.name for p in paths if p.parent == path.parent})
        by_folder.setdefault(path.parent, set()).update((path.name, note.name))
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = TEMPORARY.match(entry.name)
            if match and match["name"] in names and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
