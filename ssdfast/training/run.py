"""A training run as one object: built whole from a TrainConfig, then the epochs (train, evaluate, save), stop.

    run = TrainingRun.build(config, stop_request)  # process group, data, model, resume, logs: ready to train
    exit_code = run.train()                        # EXIT_DONE, EXIT_STOPPED or EXIT_NON_FINITE

Its parts have their own homes: placement.py (rank, device, precision), run_data.py (the loaders),
learner.py (model, optimizer, step), run_state.py (where the run stands; last.pt and best.pt) and
run_report.py (args.json, the log files, the lines it prints). TrainingRun keeps the flow.

Every rank builds the same run and reaches the collectives (the stop agreement after each step and
each epoch, the evaluation's gather, the barriers) at the same points; rank 0 alone writes
checkpoints and logs.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from ssdfast.evaluation import loop as evaluation_loop
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_NON_FINITE, EXIT_STOPPED
from ssdfast.machinery.outputs import writable_folder
from ssdfast.machinery.preemption import StopRequest
from ssdfast.machinery.runtime import host_sync_point
from ssdfast.training import pictures, recipe, run_report
from ssdfast.training.config import TrainConfig
from ssdfast.training.epoch import EpochProgress, NonFiniteLossError, train_one_epoch
from ssdfast.training.learner import Learner, fetch_starting_point
from ssdfast.training.lock import hold_save_folder
from ssdfast.training.placement import Placement
from ssdfast.training.run_data import RunData
from ssdfast.training.run_log import RunLog
from ssdfast.training.run_state import RunState
from ssdfast.training.state import keep_epoch_copy


class TrainingRun:
    """One run of a TrainConfig: its parts (placement, data, learner, state, log) and the flow of the epochs.
    curves: the last evaluation's precision-recall curves (pr.png)."""

    def __init__(self, config, stop_request, placement, data, learner, state, log):
        self.config, self.stop_request = config, stop_request
        self.placement, self.data, self.learner, self.state, self.log = placement, data, learner, state, log
        self.is_main = placement.is_main
        self.curves: dict = {}

    @classmethod
    def build(cls, config: TrainConfig, stop_request: StopRequest | None = None) -> TrainingRun:
        """The run, ready to train: the cheapest failures first (folders before data, data before the model).
        stop_request: the signal flag tools/train.py installs before anything (a signal while loading is a stop too)."""
        placement = Placement.set_up(config)
        torch.manual_seed(config.run.seed)
        if placement.is_main:  # found now, not after the first epoch; one training per save folder
            print(config.recipe_line)
            writable_folder(config.save_folder, "save folder")
            writable_folder(config.tensorboard_folder, "TensorBoard folder")
            hold_save_folder(config.save_folder)
        fetch_starting_point(config)  # the weights, before the data (which can take a minute to load)
        data = RunData.load(config, placement)
        learner = Learner.build(config, placement, list(data.info.category_names))
        state = RunState.resume(config, placement, learner, data.info)
        log = RunLog()  # the other ranks' log writes nothing
        if placement.is_main:
            steps = data.steps_per_epoch(config.schedule.iters_per_epoch)
            run_report.record_arguments(config, state.resumed_from.args if state.resumed_from else {}, state.last)
            saved_step = state.resumed_from.global_step if state.resumed_from else None
            log = run_report.open_log(config, steps, (state.start_epoch, state.resumed_iteration), saved_step)
            print(run_report.header_line(config, placement, data.info, learner.base_lr))
            short = recipe.short_run_warning(
                config.schedule.epochs, steps, config.schedule.batch_size * placement.world, data.info.num_images
            )
            if short and config.schedule.iters_per_epoch is None and state.start_epoch < config.schedule.epochs:
                print(short)  # (--iters-per-epoch: a smoke test, short on purpose)
        return cls(config, stop_request or StopRequest(), placement, data, learner, state, log)

    # --- the epochs --------------------------------------------------------------------------------------

    def train(self) -> int:
        """The epochs from where the run stands -> EXIT_DONE, EXIT_STOPPED or EXIT_NON_FINITE."""
        if self.state.start_epoch >= self.config.schedule.epochs:
            if self.is_main:
                print(
                    f"already finished at epoch {self.state.start_epoch - 1}; nothing to train (raise --epochs or "
                    "choose a new --save-folder)"
                )
            self.log.close()
            return self.finish()
        try:
            stopped_at = "the start (nothing trained)" if self.stop_agreed() else self.train_epochs()
        except NonFiniteLossError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_NON_FINITE
        finally:
            self.log.close()
        return self.stop(stopped_at) if stopped_at else self.finish()

    def train_epochs(self) -> str | None:
        """Epoch after epoch; where the run stopped if the ranks agreed to stop, else None."""
        for epoch in range(self.state.start_epoch, self.config.schedule.epochs):
            stopped_at = self.run_epoch(epoch)
            if stopped_at:
                return stopped_at
        return None

    def run_epoch(self, epoch: int) -> str | None:
        """Train one epoch, evaluate it when due, save and log it; where the run stopped, or None."""
        stats, progress = self.train_epoch(epoch)
        if stats["stopped"]:
            return f"epoch {epoch}, iteration {progress.iteration}"
        record = run_report.epoch_record(epoch, stats, self.is_main)
        if self.evaluation_due(epoch):
            self.evaluate(progress, record)
        if self.is_main:
            self.log.scalar("train/images_per_s", record["images_per_s"], record["epoch"])
            print(run_report.epoch_line(record))
            self.save_epoch(epoch, record)
        # A signal during the evaluation: the epoch is saved, stop now (every rank agrees).
        if self.stop_agreed() and epoch + 1 < self.config.schedule.epochs:
            return f"the end of epoch {epoch}"
        if self.placement.world > 1:
            dist.barrier()
        return None

    def train_epoch(self, epoch: int) -> tuple[dict, EpochProgress]:
        """The steps of one epoch, from where it stopped if it was interrupted -> (its means, where it stands)."""
        torch.manual_seed(self.config.run.seed + epoch)
        position = self.state.position
        resumed = position if position and position["epoch"] == epoch else None
        progress = EpochProgress(epoch, self.placement.device, resumed)
        stats = train_one_epoch(
            self.learner.step,
            self.data.train_loader,
            self.placement.device,
            epoch,
            lr_fn=self.learner.lr_schedule,
            channels_last=self.placement.channels_last,
            log_every=self.config.logging.log_every,
            max_iters=self.config.schedule.iters_per_epoch,
            is_main=self.is_main,
            on_log=self.log.iteration,
            progress=progress,
            after_step=self.after_step,
            on_batch=self.draw_first_batch if self.is_main else None,
        )
        return stats, progress

    def after_step(self, progress: EpochProgress) -> bool:
        """Mid-epoch last.pt when due (rank 0 decides alone) and the ranks' agreement on a stop request."""
        stop = self.stop_agreed()
        if self.is_main and (stop or self.state.schedule.due(progress.iteration - 1)):
            self.save_position(progress)
        return stop

    def stop_agreed(self) -> bool:
        """Was any rank asked to stop? (A collective: every rank calls it at the same point.)"""
        return self.placement.agreement.any(self.stop_request.requested is not None)

    def draw_first_batch(self, batch) -> None:
        """train_batch0.jpg from the first batch a run trains on (once per save folder; no extra read)."""
        picture = self.config.save_folder / "train_batch0.jpg"
        if len(batch.images) and not picture.exists():
            pictures.save_batch(batch, list(self.data.info.category_names), picture)

    def evaluation_due(self, epoch: int) -> bool:
        every, epochs = self.config.evaluation.eval_every, self.config.schedule.epochs
        return self.data.val_loader is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs)

    def evaluate(self, progress: EpochProgress, record: dict) -> None:
        """COCO evaluation on every rank (a collective); the metrics join `record` on rank 0."""
        if self.is_main:  # the trained epoch is safe before the evaluation (a kill during it loses only that)
            self.save_position(progress)
        device = self.placement.device
        shown = pictures.ValidationPictures(self.config.save_folder, self.data.val_loader.info)  # the first val images
        coco, table, results, image_ids = evaluation_loop.evaluate(
            self.learner.ddp_model,
            self.data.val_loader,
            device,
            amp_dtype=self.placement.amp_dtype,
            channels_last=self.placement.channels_last,
            policy=self.config.evaluation.policy,
            max_batches=self.config.evaluation.eval_batches,
            is_main=self.is_main,
            curves=self.curves,
            on_batch=shown,
        )
        if self.is_main:
            print(f"epoch {progress.epoch} COCO evaluation:\n{table}")
            grid = shown.save(self.learner.model, device, results, image_ids)  # val_batch0_*.jpg, confusion_matrix.*
            if grid is not None:  # the predictions in TensorBoard too
                self.log.image("val/predictions", grid, progress.epoch)
            for key, value in (coco or {}).items():  # None: nothing to evaluate (said in `table`)
                record[f"coco/{key}"] = value
                self.log.scalar(f"coco/{key}", value, progress.epoch)

    # --- saving and stopping -----------------------------------------------------------------------------

    def save_epoch(self, epoch: int, record: dict) -> None:
        """Rank 0 at an epoch end: best.pt when record's AP beats the best so far, last.pt, then the log line
        (after the save: a kill before it replays the epoch, which then logs it once), the epoch copy."""
        state, ap = self.state, record.get("coco/AP", -1.0)
        improved, state.best_ap = ap > state.best_ap, max(state.best_ap, ap)
        state.save(epoch, None, self.log.step(epoch + 1, 0), also_best=improved)
        self.log.record(record)
        pictures.save_plots(self.config.save_folder, self.curves)
        if self.config.run.keep_checkpoints:
            keep_epoch_copy(state.last, epoch, self.config.run.keep_checkpoints)

    def save_position(self, progress: EpochProgress) -> None:
        """last.pt in the middle of an epoch: the weights and where the epoch stands."""
        with host_sync_point(self.placement.device):  # reads the loss sums and the weights
            position = {**progress.state_dict(), "world": self.placement.world}
            self.state.save(progress.epoch - 1, position, self.log.step(progress.epoch, progress.iteration))

    def stop(self, where: str) -> int:
        """After a stop request: wait until rank 0 has written last.pt (a rank leaving early would make
        torchrun tear the others down mid-write), say where to resume, EXIT_STOPPED."""
        self.stop_request.exiting()
        if self.placement.world > 1:
            dist.barrier()
        if self.is_main:
            print(
                f"stopped ({self.stop_request.requested or 'another rank was signalled'}) at {where}: "
                f"{self.state.last} holds the run so far; run the same command to resume from there "
                f"(exit code {EXIT_STOPPED})",
                flush=True,
            )
        if self.placement.world > 1:
            dist.destroy_process_group()
        return EXIT_STOPPED

    def finish(self) -> int:
        """All epochs done: say where the checkpoints are, EXIT_DONE."""
        if self.is_main:
            folder = self.config.save_folder
            written = ", ".join(name for name in ("last.pt", "best.pt") if (folder / name).exists())
            print(f"done: checkpoints in {folder} ({written}), log {folder / 'log.jsonl'}")
        if self.placement.world > 1:
            # Tear down together: without an evaluation at the end nothing else waits for rank 0's last
            # save, and a rank destroying its gloo group while a peer still holds the connection can abort
            # with "terminate called without an active exception" (docs/training.md "Stop and resume").
            dist.barrier()
            dist.destroy_process_group()
        return EXIT_DONE
