"""One training per save folder: SAVE_FOLDER/train.lock, held by the run that writes there.

Two trainings into one folder would interleave log.jsonl, overwrite each other's last.pt, and the
second would delete the checkpoint the first is writing (stale temporaries are removed at start).
The lock file is flock()ed while the run lives and names its pid and host. The kernel drops an
flock when its process dies, however it dies (SIGKILL, OOM), so a lock file left behind by a dead
run on this host is recognised and taken over. A lock naming another host (a shared file system,
where flock may not reach across machines) is never taken over: the message says how to override.
Only rank 0 takes it; the other ranks of the run share the folder.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ssdfast.machinery.outputs import remove_stale_temporaries

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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUseError(self._in_use(self._holder(), "is in use by")) from None
            if _same_file(fd, self.path):  # not a file its holder unlinked while we opened it
                self._take(fd, say)
            else:
                os.close(fd)
        return self

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

    def _holder(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                return _read_holder(f.fileno())
        except OSError:
            return {}

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
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
