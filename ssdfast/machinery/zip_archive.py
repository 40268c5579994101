"""A model file's zip archive, read once: checked with Python's zipfile, then rebuilt, so that torch
reads exactly the entries that were checked and nothing else of the file.

torch.load and torch.export.load read a zip archive with miniz, ssdfast's checks with Python's
zipfile, and the two readers disagree on crafted files: an archive with two central directories is
one archive to zipfile (it takes the directory just before the end record and shifts every offset by
what precedes it) and another to miniz (it follows the end record's offset). A check of one reading
says nothing about the other. So a zip model file goes through ``read_archive``:
  * its bytes are read once; zipfile reads every entry of them: stored, not compressed (torch never
    compresses, so no entry can expand), its CRC right, its name unique and inside one root folder;
  * torch's own reader must list the same entries in the same order, or the file is refused: a file
    that two readers read differently is crafted or broken, and neither reading can be trusted;
  * torch is handed a fresh archive written from the entries zipfile read (``Archive.data``): one
    central directory, nothing before, between or after the entries. No byte of the file that was
    not checked reaches torch, whatever the file's layout (local headers that disagree with the
    directory, data before the first entry, trailing data, zip64 records).
Cost: two CRC passes and a copy, about 0.15 s for SSD300's 92 MB checkpoint on one CPU core, and the
archive held twice in memory while it is rebuilt.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

ZIP_MAGIC = b"PK\x03\x04"  # how torch.load tells a zip checkpoint from the legacy pickle format


class ArchiveError(Exception):
    """A zip model file that cannot be read (`unsafe` False: broken) or is refused (`unsafe` True:
    it reads differently to torch than to the checks). The message names the file."""

    def __init__(self, message: str, unsafe: bool = False):
        super().__init__(message)
        self.unsafe = unsafe


@dataclass(frozen=True)
class Archive:
    """The checked entries of a zip model file, rebuilt. names: the entries' names inside the root folder,
    in the file's order; data: the rebuilt zip, the bytes to hand torch (io.BytesIO(data))."""

    root: str
    names: list[str]
    data: bytes

    def read(self, name: str) -> bytes:
        """The bytes of the entry `name` (inside the root folder), from the rebuilt archive."""
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            return archive.read(f"{self.root}/{name}")


def read_archive(path: Path, data: bytes, what: str) -> Archive:
    """The zip archive whose bytes (read from `path`) are `data`, checked as the module docstring says and
    rebuilt from its checked entries. Raises ArchiveError naming `path` as `what` ('checkpoint', ...)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ArchiveError(
            f"cannot read {what} {path}: not a zip archive ({error}) (truncated or corrupted file?)"
        ) from error
    names = [info.filename for info in infos]
    root = names[0].split("/")[0] if names else ""
    _check_names(path, names, root, what)
    inner = [name[len(root) + 1 :] for name in names]
    _check_torch_reads_the_same(path, data, inner)
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as out:
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ArchiveError(f"{path} is refused: entry {info.filename} is compressed (torch writes none)", True)
            try:
                payload = archive.read(info)  # checks the entry's CRC (and its local header's name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                raise ArchiveError(
                    f"cannot read {what} {path}: its entry {info.filename} is corrupted ({error}); "
                    "the file was damaged on disk or in transfer"
                ) from error
            out.writestr(zipfile.ZipInfo(info.filename), payload)
    checked = Archive(root, inner, rebuilt.getvalue())
    _check_torch_reads_the_same(path, checked.data, inner)  # the rebuilt one too: it is what torch loads
    return checked


def _check_names(path: Path, names: list[str], root: str, what: str) -> None:
    if not names:
        raise ArchiveError(f"cannot read {what} {path}: its zip archive is empty")
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ArchiveError(f"{path} is refused: its zip archive names the entry {twice!r} twice", True)
    outside = next((name for name in names if not name.startswith(root + "/")), None)
    if outside is not None:
        raise ArchiveError(
            f"{path} is refused: its entry {outside!r} is not inside the folder {root!r} that holds the others "
            "(torch keeps every entry in one folder)",
            True,
        )


def _check_torch_reads_the_same(path: Path, data: bytes, names: list[str]) -> None:
    try:
        records = torch._C.PyTorchFileReader(io.BytesIO(data)).get_all_records()
    except Exception as error:  # miniz's failure to read what zipfile read: c10::Error, UnicodeDecodeError
        reason = (str(error).splitlines() or [error.__class__.__name__])[0][:200]
        records, unreadable = None, reason
    if records == names:
        return
    if records is None:
        difference = f"PyTorch's reader cannot read it ({unreadable})"
    else:
        ours, theirs = set(names), set(records)
        only = sorted(theirs - ours)[:1] or sorted(ours - theirs)[:1]
        difference = (
            f"{only[0]!r} is only in {'PyTorch' if only[0] in theirs else 'Python'}'s reading"
            if only
            else "the two readings list the entries in another order or more than once"
        )
    raise ArchiveError(
        f"{path} is refused: Python's zip reader (which checked it) and PyTorch's (which would load it) "
        f"read different archives: {difference}. A file that two readers read differently is crafted "
        "or broken",
        True,
    )
