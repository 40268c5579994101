"""What a run records as it goes: log.jsonl (one JSON object a line) and TensorBoard scalars.

Rank 0 writes them; the other ranks hold a RunLog without files, whose methods do nothing, so the
training code calls it the same way on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path


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
        self.file = self.writer = None
        if folder is None:
            return
        from torch.utils.tensorboard import SummaryWriter  # a slow import: rank 0 only

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(tensorboard), purge_step=resumed_at or None)
        self.file = open(Path(folder) / "log.jsonl", "a")

    def record(self, record: dict) -> None:
        """One line of log.jsonl, flushed (a run killed next keeps it)."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image_rgb, step: int) -> None:
        """An RGB uint8 picture [H, W, 3] in TensorBoard's images tab."""
        if self.writer is not None:
            self.writer.add_image(tag, image_rgb, step, dataformats="HWC")

    def step(self, epoch: int, iteration: int) -> int:
        """The global step of an iteration (TensorBoard's x axis of the train/* scalars)."""
        return self.origin + epoch * self.steps_per_epoch + iteration

    def iteration(self, epoch: int, iteration: int, values: dict) -> None:
        """A log point inside an epoch: a line with epoch and iteration, and train/* scalars at the global step."""
        self.record({"epoch": epoch, "iteration": iteration, **values})
        for key, value in values.items():
            self.scalar(f"train/{key}", value, self.step(epoch, iteration))

    def close(self) -> None:
        if self.file is not None:
            self.writer.close()
            self.file.close()
            self.file = self.writer = None
