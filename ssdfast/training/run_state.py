"""Where a run stands, and its checkpoints: a fresh start, or the point last.pt says a previous run
reached (the epoch, the position inside it, the best AP so far); and writing last.pt / best.pt.
What a checkpoint holds: training/state.py."""

from __future__ import annotations

from pathlib import Path

import torch

from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.training.checkpoint_schedule import CheckpointSchedule
from ssdfast.training.config import TrainConfig
from ssdfast.training.epoch import NonFiniteLossError
from ssdfast.training.learner import Learner
from ssdfast.training.placement import Placement
from ssdfast.training.state import ResumePoint, resume_training, set_aside_previous_run, training_state


class RunState:
    """start_epoch, best_ap, position (where an interrupted epoch stopped, in this run's batches; None:
    at an epoch start) and resumed_from (how last.pt was trained; None for a fresh run); `schedule`
    says when a mid-epoch last.pt is due. save() writes them with the learner's weights (rank 0)."""

    def __init__(self, config: TrainConfig, placement: Placement, learner: Learner, info):
        self.config, self.placement, self.learner, self.info = config, placement, learner, info
        self.folder = config.save_folder
        self.last = self.folder / "last.pt"
        self.schedule = CheckpointSchedule(config.run.checkpoint_every)
        self.start_epoch, self.best_ap, self.position = 0, -1.0, None
        self.resumed_from: ResumePoint | None = None

    @classmethod
    def resume(cls, config: TrainConfig, placement: Placement, learner: Learner, info) -> RunState:
        """Continue from last.pt unless --no-resume (which sets the previous run's files aside): weights,
        optimizer, scaler, best AP and where to go on. Every rank reads it, and the ranks check that they
        found the same one (a collective)."""
        state = cls(config, placement, learner, info)
        if config.run.no_resume:
            aside = set_aside_previous_run(state.folder) if placement.is_main else None
            if aside:
                print(f"--no-resume: the previous run's files in {state.folder} are now in {aside}")
            return state
        if not state.last.exists():
            return state
        point = resume_training(
            state.last,
            learner.model,
            learner.optimizer,
            learner.scaler,
            model_name=config.model.model,
            category_names=info.category_names,
            check_names=not config.run.ignore_category_names,
            data=config.data.data_path,
        )
        state.resumed_from = point
        state.start_epoch, state.best_ap, state.position = point.start_epoch, point.best_ap, point.position
        rebatched = state.rebatch_position()
        if not placement.agreement.same([state.start_epoch, state.resumed_iteration]):
            raise ValueError(
                f"the ranks found different checkpoints in {state.folder}: every rank must see the "
                "same save folder (a shared file system)"
            )
        if placement.is_main and state.start_epoch < config.schedule.epochs:  # a finished run says so in train()
            state.say_where_it_resumes(rebatched)
        return state

    def rebatch_position(self) -> str | None:
        """A run stopped mid-epoch with another global batch (--batch-size or the number of processes changed)
        continues after the same number of the epoch's images, not after the same number of batches (which would
        skip or repeat images) -> what changed, or None."""
        position, world, saved = self.position, self.placement.world, self.resumed_from
        batch = self.config.schedule.batch_size * world
        if not position:
            return None
        saved_batch = (saved.world or world) * saved.args.get("batch_size", self.config.schedule.batch_size)
        if saved_batch == batch:
            return None
        done = position["iteration"] * saved_batch
        self.position = {**position, "iteration": done // batch}
        return (
            f"it trained {done} images of epoch {position['epoch']} in batches of {saved_batch}; in batches of "
            f"{batch} this run goes on after {done // batch * batch} of them"
        )

    @property
    def resumed_iteration(self) -> int:
        return self.position["iteration"] if self.position else 0

    def say_where_it_resumes(self, rebatched: str | None) -> None:
        if not self.position:
            print(
                f"resuming from {self.last}: epoch {self.start_epoch - 1} done, continuing at epoch {self.start_epoch}"
            )
        else:
            it = self.resumed_iteration
            print(
                f"resuming from {self.last}: epoch {self.start_epoch} stopped, continuing with iteration {it} (0-based)"
            )
        if rebatched:
            print(f"warning: {self.last}: {rebatched}")
        saved_world, world = (self.resumed_from.world if self.resumed_from else None), self.placement.world
        if saved_world is not None and saved_world != world:
            print(
                f"warning: {self.last} was written by {saved_world} processes, this run has "
                f"{world}: the global batch, lr and data order change, so this continues as a different run"
            )

    def save(self, epochs_done: int, position: dict | None, global_step: int, also_best: bool = False) -> None:
        """Write last.pt (rank 0 only; no collective inside, so rank 0 alone may decide when).
        epochs_done: the last finished epoch; position: where the next one stands (None: at its start);
        global_step: the TensorBoard step the next iteration logs at.
        also_best: the same state to best.pt first (a kill between the two never leaves best_ap ahead of best.pt)."""
        model = self.learner.model
        if position is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # Another rank's NaN reaches these weights through the all-reduce before this rank's loss shows it.
            raise NonFiniteLossError(
                f"the weights became non-finite in epoch {position['epoch']} before iteration "
                f"{position['iteration']}: not saved (last.pt is the one before); try a lower --lr"
            )
        state = training_state(
            model,
            self.learner.optimizer,
            self.learner.scaler,
            model_name=self.config.model.model,
            epoch=epochs_done,
            category_ids=self.info.category_ids,
            category_names=self.info.category_names,
            best_ap=self.best_ap,
            args=self.config.as_flags(),
            position=position,
            world=self.placement.world,
            global_step=global_step,
        )
        if also_best:
            save_checkpoint(Path(self.folder) / "best.pt", state)
        save_checkpoint(self.last, state)
        self.schedule.saved()
