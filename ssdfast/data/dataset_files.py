"""Every file a dataset names or implies is opened here, under one rule: inside its folder, regular, bounded.

A dataset is data from elsewhere. Its files name other files (COCO `file_name`s, VOC ids and XMLs, YOLO
list files, label files and data.yaml entries), and any of them may be a symlink out of the folder
(`labels/a.txt -> /home/you/.ssh/id_rsa`), an absolute or `../` name, a FIFO (an open() that waits
forever), a device (a read without end) or a sparse file of gigabytes. So, for each such file:

  * it must lie inside the folder it is named in, symlinks followed (resolves_inside); the folder itself
    may be a link. --allow-outside-paths lifts this for datasets the user trusts;
  * only a regular file is opened (open_regular: O_NONBLOCK, so a FIFO opens at once and is refused);
  * it is read only when its size is under a cap (the file's own size, before reading a byte).

A file that breaks the rule raises UnusableFile naming the file and the problem; the readers drop and
count it (a label file, an XML, an image) or stop with one line (a list file, data.yaml).
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ssdfast.machinery.user_errors import shown

# Label files, VOC XMLs, list files and data.yaml are read whole: a list of 4 million image paths fits,
# a label file or an XML is kilobytes. Reading one costs at most this much memory.
MAX_TEXT_BYTES = 256 * 2**20
# One image's annotations (a YOLO label file, a VOC XML): 16 MiB holds about 500,000 boxes; parsing a
# 200 MB label file took 5.7 GB.
MAX_RECORD_BYTES = 16 * 2**20

OUTSIDE = "outside the dataset folder"
NOT_REGULAR = "not a regular file"
TOO_LARGE = "over the size limit"
CANNOT_OPEN = "cannot be opened"
NOT_UTF8 = "not UTF-8 text"


class UnusableFile(ValueError):
    """A file of a dataset that is not read. `problem` is the short reason drops are counted under
    (OUTSIDE, NOT_REGULAR, ...); the message names the file, the problem and the detail."""

    def __init__(self, path: str | Path, problem: str, detail: str = ""):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{shown(str(path))}: {problem}{f' ({detail})' if detail else ''}")


def resolves_inside(folder: Path, file_name: str) -> bool:
    """Does folder/file_name, symlinks followed, lie inside `folder` (itself resolved: it may be a link)?

    A plain name directly in the folder (COCO's case) costs one lstat: only the file itself can be a
    link. Anything else (a sub-folder, "..", an absolute name) costs a realpath: an lstat per component."""
    real_folder = _real_folder(folder)
    path = os.path.join(folder, file_name)
    plain = file_name not in ("", ".", "..") and os.path.basename(file_name) == file_name
    if plain and not os.path.islink(path):
        return True
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte in the name
        return False
    return real == real_folder or real.startswith(real_folder.rstrip(os.sep) + os.sep)


@functools.lru_cache(maxsize=16)
def _real_folder(folder: Path) -> str:
    return os.path.realpath(folder)


def contained(folder: str | Path, name: str | Path, allow_outside: bool = False) -> Path:
    """folder/name, checked to lie inside `folder` (resolves_inside) unless allow_outside; UnusableFile if not."""
    folder = Path(folder)
    if not allow_outside and not resolves_inside(folder, str(name)):
        raise UnusableFile(folder / name, OUTSIDE, f"it resolves outside {shown(str(folder))}")
    return folder / name


def open_regular(path: str | Path, max_bytes: int | None, limit: str = "the limit") -> BinaryIO:
    """`path` opened for reading once it is known to be a regular file of at most max_bytes (None: any
    size). FileNotFoundError as usual; UnusableFile for anything else (a FIFO, a device, a directory, a
    larger file, a name the file system cannot hold). limit: what max_bytes is called, for the message."""
    try:
        # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (it is then refused);
        # on a regular file it changes nothing.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # EISDIR, ENAMETOOLONG, EACCES, ELOOP, a NUL byte
        raise UnusableFile(path, CANNOT_OPEN, getattr(error, "strerror", None) or str(error)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnusableFile(path, NOT_REGULAR, _kind(info.st_mode))
        if max_bytes is not None and info.st_size > max_bytes:
            raise UnusableFile(path, TOO_LARGE, f"{info.st_size} bytes; {limit} is {max_bytes}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(file: BinaryIO, path: str | Path, max_bytes: int | None, limit: str = "the limit") -> bytes:
    """The rest of an open_regular file: at most max_bytes, even if it grew since it was opened."""
    data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise UnusableFile(path, TOO_LARGE, f"it grew while read; {limit} is {max_bytes}")
    return data


def read_dataset_bytes(
    folder: str | Path, name: str | Path, allow_outside: bool = False, max_bytes: int | None = MAX_TEXT_BYTES
) -> bytes:
    """The bytes of folder/name under the module's rule: inside the folder, a regular file, at most max_bytes."""
    path = contained(folder, name, allow_outside)
    with open_regular(path, max_bytes) as file:
        return read_bounded(file, path, max_bytes)


def read_dataset_text(
    folder: str | Path, name: str | Path, allow_outside: bool = False, max_bytes: int | None = MAX_TEXT_BYTES
) -> str:
    """read_dataset_bytes as UTF-8 text (a BOM is dropped); UnusableFile naming the file when it is not."""
    raw = read_dataset_bytes(folder, name, allow_outside, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        detail = f"byte 0x{raw[error.start]:02x} at offset {error.start}"
        raise UnusableFile(Path(folder) / name, NOT_UTF8, detail) from None


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"
