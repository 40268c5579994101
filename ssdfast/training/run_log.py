"""What a run records as it goes: log.jsonl (one JSON object a line) and TensorBoard scalars.

Rank 0 writes them; the other ranks hold a RunLog without files, whose methods do nothing, so the
training code calls it the same way on every rank. Both are for looking, not for resuming (last.pt is):
a write that fails (a full disk, a vanished folder) is a warning, once per file, and the run goes on.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from pathlib import Path


def _quiet_tensorboard_thread(args) -> None:
    """threading.excepthook: TensorBoard's writer thread dies on a failed write and Python prints its
    traceback; RunLog already says it in one line (the thread re-raises the error on the next call)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook


class RunLog:
    """log.jsonl in `folder` and TensorBoard scalars in `tensorboard` (None: nothing is written).

    resumed_at: the global step a resumed run continues from, at (epoch, iteration) `start`; scalars an
    interrupted run logged after its last checkpoint are dropped from there (TensorBoard's purge_step), not
    doubled, and the steps go on from it even when the steps per epoch changed (another batch size)."""

    def __init__(
        self,
        folder: str | Path | None = None,
        tensorboard: str | Path | None = None,
        steps_per_epoch: int = 1,
        resumed_at: int = 0,
        start: tuple[int, int] = (0, 0),
    ):
        self.steps_per_epoch = steps_per_epoch
        self.origin = resumed_at - (start[0] * steps_per_epoch + start[1])  # 0 unless the steps per epoch changed
        self.path = self.writer = None
        self.failed: set[str] = set()  # the files a write failed for (each warned about once)
        if folder is None:
            return
        from torch.utils.tensorboard import SummaryWriter  # a slow import: rank 0 only

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / "log.jsonl"  # created by the first line written: never left empty
        threading.excepthook = _quiet_tensorboard_thread
        try:
            self.writer = SummaryWriter(str(tensorboard), purge_step=resumed_at or None)
        except OSError as error:
            self.warn("TensorBoard", error)

    def warn(self, what: str, error: BaseException) -> None:
        """A failed write, said once per file; the run goes on."""
        if what not in self.failed:
            self.failed.add(what)
            reason = getattr(error, "strerror", None) or str(error)
            print(f"warning: cannot write {what} ({reason}): training goes on without it", file=sys.stderr)

    def record(self, record: dict) -> None:
        """One line of log.jsonl, in one write (a run killed next keeps it). A write that fails is cut
        back, so no torn line stays (and no empty log.jsonl, if it was the first)."""
        if self.path is None:
            return
        data = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                before = os.fstat(fd).st_size
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    if before == 0:
                        os.unlink(self.path)
                    else:
                        os.ftruncate(fd, before)
                    raise
            finally:
                os.close(fd)
        except OSError as error:
            self.warn(f"{self.path}", error)

    def _tensorboard(self, write) -> None:
        """write(the SummaryWriter); a failure ends TensorBoard for this run (its writer thread is gone)."""
        if self.writer is None:
            return
        try:
            write(self.writer)
        except OSError as error:
            self.warn("TensorBoard", error)
            self.writer = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._tensorboard(lambda writer: writer.add_scalar(tag, value, step))

    def image(self, tag: str, image_rgb, step: int) -> None:
        """An RGB uint8 picture [H, W, 3] in TensorBoard's images tab."""
        self._tensorboard(lambda writer: writer.add_image(tag, image_rgb, step, dataformats="HWC"))

    def step(self, epoch: int, iteration: int) -> int:
        """The global step of an iteration (TensorBoard's x axis of the train/* scalars)."""
        return self.origin + epoch * self.steps_per_epoch + iteration

    def iteration(self, epoch: int, iteration: int, values: dict) -> None:
        """A log point inside an epoch: a line with epoch and iteration, and train/* scalars at the global step."""
        self.record({"epoch": epoch, "iteration": iteration, **values})
        for key, value in values.items():
            self.scalar(f"train/{key}", value, self.step(epoch, iteration))

    def close(self) -> None:
        self._tensorboard(lambda writer: writer.close())
        self.path = self.writer = None
