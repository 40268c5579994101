"""One training per save folder: SAVE_FOLDER/train.lock, held by the run that writes there.

Two trainings into one folder would interleave log.jsonl, overwrite each other's last.pt, and the
second would delete the checkpoint the first is writing (stale temporaries are removed at start).
The lock file is flock()ed while the run lives and names its pid and host. The kernel drops an
flock when its process dies, however it dies (SIGKILL, OOM), so a lock file left behind by a dead
run on this host is recognised and taken over. A lock naming another host (a shared file system,
where flock may not reach across machines) is never taken over: the message says how to override.
Only rank 0 takes it; the other ranks of the run share the folder.

The lock file is written (the holder's pid), so it is only ever a regular file of its own: created with
O_EXCL, reopened with O_NOFOLLOW, and refused in one line when it is anything else (a symlink, which
would have training write through it into another file; a hard link; a directory, a FIFO).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from ssdfast.machinery.outputs import remove_stale_temporaries
from ssdfast.machinery.user_errors import parse_json

LOCK_NAME = "train.lock"
_held: dict[Path, SaveFolderLock] = {}  # this process's locks: main() may run twice in one process (tests)


class FolderInUseError(ValueError):
    """Another training holds the save folder; the message names its host and pid."""


class SaveFolderLock:
    """The lock of one save folder. acquire() or `with`; release() deletes the file."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, say=print) -> SaveFolderLock:
        """Take the lock (FolderInUseError if a live run holds it); say() reports a stale lock taken over."""
        while self.fd is None:
            fd = self._open()
            if fd is None:
                continue  # its holder deleted it between our two opens: create it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderInUseError(self._in_use(holder, "is in use by")) from None
            if _same_file(fd, self.path):  # not a file its holder unlinked while we opened it
                self._take(fd, say)
            else:
                os.close(fd)
        return self

    def _open(self) -> int | None:
        """A descriptor of the lock file, created if absent (O_EXCL: never through a link), else opened
        without following a symlink; None when it vanished in between. A ValueError naming it when it is
        not a regular file of its own."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO opens at once
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                return None
            except OSError as error:
                known = {errno.ELOOP: "a symlink", errno.EISDIR: "a directory"}
                raise self._not_a_lock(known.get(error.errno, f"cannot be opened ({error.strerror})")) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise self._not_a_lock("not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link")
        return fd

    def _not_a_lock(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path}: {what}, not a lock file a training wrote (a training writes its pid there, into "
            "whatever the name leads to): remove it, or choose another --save-folder"
        )

    def _take(self, fd: int, say) -> None:
        holder, me = _read_holder(fd), _identity()
        if holder and holder.get("host") != me["host"]:
            os.close(fd)  # flock may not reach across hosts: that run may be alive
            raise FolderInUseError(
                self._in_use(holder, "names a training on another host,") + ": if it has "
                f"ended, delete {self.path} and start again"
            )
        if holder:
            say(
                f"taking over {self.path}: its training (pid {holder.get('pid')}, started {holder.get('since')}) "
                "is no longer running"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def _in_use(self, holder: dict, verb: str) -> str:
        return (
            f"the save folder {self.path.parent} {verb} pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {holder.get('since', '?')}): two trainings into one folder "
            "would mix their checkpoints and logs; choose another --save-folder"
        )

    def release(self) -> None:
        """Delete the lock file (if it is still ours) and drop the flock; safe to call twice."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> SaveFolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold_save_folder(folder: str | Path, say=print) -> SaveFolderLock:
    """Take `folder`'s lock for the rest of this process (released at exit, whatever the exit code),
    then delete the checkpoint temporaries an interrupted run left there: only the holder may."""
    key = Path(os.path.realpath(folder))
    if key not in _held:
        _held[key] = SaveFolderLock(folder).acquire(say)
        atexit.register(_held[key].release)
    for tmp in remove_stale_temporaries(folder):
        say(f"removed {tmp.name}: a checkpoint write that was interrupted")
    return _held[key]


def _identity() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_holder(fd: int) -> dict:
    """The holder a lock file names ({} if empty or unreadable: its writer died before writing it)."""
    try:
        holder = parse_json(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
