"""A training run as one object: setup, resume, the epochs (train, evaluate, save), stop.

tools/train.py parses the command line and drives it:

    run = TrainingRun(args, stop_request)  # checks the flags that need no work
    run.setup()                            # process group, device settings, data, model, optimizer
    run.resume()                           # from SAVE_FOLDER/last.pt, if there is one
    run.start()                            # DDP wrapper, the step, the logs and the header line
    exit_code = run.train()                # EXIT_DONE, EXIT_STOPPED or EXIT_NON_FINITE

Every rank builds the same run and reaches the collectives (the stop agreement after each step and
each epoch, the evaluation's gather, the barriers) at the same points; rank 0 alone writes
checkpoints and logs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ssdfast.data import build_loader
from ssdfast.data.coco import images_summary
from ssdfast.evaluation import loop as evaluation_loop
from ssdfast.flag_types import detection_policy
from ssdfast.machinery.checkpoint import save_checkpoint
from ssdfast.machinery.exit_codes import EXIT_DONE, EXIT_NON_FINITE, EXIT_STOPPED
from ssdfast.machinery.outputs import writable_folder, write_json_atomic
from ssdfast.machinery.preemption import StopAgreement, StopRequest, process_group_timeout
from ssdfast.machinery.runtime import (
    autocast_dtype,
    configure_cudnn,
    host_sync_point,
    setup_distributed,
    use_channels_last,
)
from ssdfast.models import build_model
from ssdfast.training import pictures
from ssdfast.training.checkpoint_schedule import CheckpointSchedule
from ssdfast.training.epoch import EpochProgress, NonFiniteLossError, train_one_epoch
from ssdfast.training.finetune import load_source, transfer_weights
from ssdfast.training.lock import hold_save_folder
from ssdfast.training.optimizer import LrSchedule, build_optimizer, scaled_lr
from ssdfast.training.run_log import RunLog
from ssdfast.training.state import ResumePoint, keep_epoch_copy, resume_training, set_aside_previous_run, training_state
from ssdfast.training.step import CompiledTrainStep, CudaGraphTrainStep, TrainStep

# Arguments that choose where a new run starts from: a resumed run starts from last.pt whatever they say.
STARTING_POINT_ARGS = {"weights", "backbone_weights", "no_resume"}


class TrainingRun:
    """One run of tools/train.py's arguments (`args`: its namespace, with args.model canonical).

    Its state, explicit: where the run stands (start_epoch, position: where the interrupted epoch
    stopped or None, best_ap) and what it trains with (rank/world/device, the loaders, model and
    ddp_model, optimizer, scaler, step, lr_schedule, schedule: when to save inside an epoch, log)."""

    def __init__(self, args, stop_request: StopRequest | None = None):
        """Checks the flags that need no work, so a bad value fails before any."""
        self.args = args
        self.stop_request = stop_request or StopRequest()  # tools/train.py's run() installs its handlers
        self.schedule = CheckpointSchedule(args.checkpoint_every)
        if args.compile and args.cuda_graphs:  # a compiled region inside the step's own capture: not tried
            raise ValueError(
                "--compile and --cuda-graphs exclude each other: --compile-mode reduce-overhead replays the "
                "compiled forward and backward from CUDA graphs"
            )
        if args.keep_checkpoints < 0:
            raise ValueError(f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
        self.timeout = process_group_timeout(args.dist_timeout)
        self.save_folder = Path(args.save_folder)
        self.last = self.save_folder / "last.pt"
        self.tensorboard_folder = Path(args.log_path) if args.log_path else self.save_folder / "tensorboard"
        self.start_epoch, self.best_ap, self.position = 0, -1.0, None  # resume() reads them from last.pt
        self.resumed_from: ResumePoint | None = None  # how last.pt was trained, when the run resumes
        self.curves: dict = {}  # the last evaluation's precision-recall curves (pr.png)
        self.log = RunLog()  # start() opens the files on rank 0

    # --- before the first step ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything the first step needs, the cheapest failures first."""
        self.rank, self.world, self.device = setup_distributed(self.args.device, self.timeout)
        self.is_main = self.rank == 0
        self.agreement = StopAgreement(self.timeout)  # every rank, at the same point (new_group is a collective)
        self.configure_device()
        torch.manual_seed(self.args.seed)
        if self.is_main:  # found now, not after the first epoch
            self.check_folders()
        self.build_data()
        self.build_model()

    def configure_device(self) -> None:
        """cuDNN autotuning, memory format, autocast dtype and GradScaler; CUDA graphs only where they run."""
        args, device = self.args, self.device
        if args.cuda_graphs and device.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device (CUDA graphs do not exist on CPU)")
        if args.cuda_graphs and self.world > 1:
            # PyTorch's recipe for capturing DDP (DDP built on a side stream, 11+ eager warm-up steps,
            # NCCL async error handling off) has not been run on several GPUs here: refuse rather than guess.
            raise ValueError(
                "--cuda-graphs is single-process for now (capturing DDP is untested): drop "
                "--cuda-graphs under torchrun, or train on one GPU"
            )
        self.cudnn_benchmark = configure_cudnn(device, not args.no_cudnn_benchmark)
        self.channels_last = use_channels_last(device, args.channels_last)
        self.amp_dtype = autocast_dtype(device, args.amp, args.amp_dtype, args.cuda_graphs)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None

    def check_folders(self) -> None:
        """The output folders take files; one training per save folder (refused at once), whose holder
        clears the temporary files of interrupted checkpoint writes."""
        writable_folder(self.save_folder, "save folder")
        writable_folder(self.tensorboard_folder, "TensorBoard folder")
        hold_save_folder(self.save_folder)

    def build_data(self) -> None:
        """This rank's shard of the training set, and of the validation set when the run evaluates."""
        args = self.args
        common = dict(
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            rank=self.rank,
            world_size=self.world,
            seed=args.seed,
            max_boxes=args.max_boxes,
            backend=args.data_backend,
            device=self.device,
            channels_last=self.channels_last,
            data_format=args.data_format,
            max_pixels=args.max_pixels,
            allow_outside_paths=args.allow_outside_paths,
        )
        self.train_loader = build_loader(
            args.data_path, "train", train=True, ann_file=args.train_ann, image_dir=args.train_images, **common
        )
        self.val_loader = (
            build_loader(args.data_path, "val", train=False, ann_file=args.val_ann, image_dir=args.val_images, **common)
            if args.eval_every > 0
            else None
        )
        self.info = self.train_loader.info

    def build_model(self) -> None:
        """The model on the device, SGD and the lr schedule (--lr scaled to the global batch)."""
        args = self.args
        backbone = "none" if args.weights else args.backbone_weights  # fine-tuning brings its own backbone
        model = build_model(args.model, num_classes=len(self.info.category_ids), backbone_weights=backbone)
        if args.weights:
            self.fine_tune_from(model, args.weights)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.base_lr = scaled_lr(args.lr, args.batch_size * self.world)
        self.lr_schedule = LrSchedule(self.base_lr, tuple(args.multistep), args.warmup)
        self.optimizer = build_optimizer(
            self.model,
            self.base_lr,
            self.device,
            momentum=args.momentum,
            nesterov=not args.no_nesterov,
            weight_decay=args.weight_decay,
            decay_norms_and_biases=not args.no_bn_weight_decay,
            lr_as_tensor=args.cuda_graphs,
        )

    def fine_tune_from(self, model, weights) -> None:
        """Start from a detector trained on other categories (--weights): see ssdfast/training/finetune.py."""
        state, meta = load_source(weights)
        if meta["model_name"] != self.args.model:
            raise ValueError(
                f"--weights {weights} holds {meta['model_name']}, not {self.args.model}: pass "
                f"--model {meta['model_name']}"
            )
        report = transfer_weights(model, state, meta["category_names"], list(self.info.category_names))
        if self.is_main:
            print(f"{weights}: {report}")

    def resume(self) -> None:
        """Continue from last.pt unless --no-resume (which sets the previous run's files aside): weights,
        optimizer, scaler, best AP and where to go on. Every rank reads it, and the ranks check that they found
        the same one (a collective)."""
        args = self.args
        if args.no_resume:
            aside = set_aside_previous_run(self.save_folder) if self.is_main else None
            if aside:
                print(f"--no-resume: the previous run's files in {self.save_folder} are now in {aside}")
            return
        if not self.last.exists():
            return
        point = resume_training(
            self.last,
            self.model,
            self.optimizer,
            self.scaler,
            model_name=args.model,
            category_names=self.info.category_names,
            check_names=not args.ignore_category_names,
            data=args.data_path,
        )
        self.resumed_from = point
        self.start_epoch, self.best_ap, self.position = point.start_epoch, point.best_ap, point.position
        rebatched = self.rebatch_position()
        if not self.agreement.same([self.start_epoch, self.resumed_iteration]):
            raise ValueError(
                f"the ranks found different checkpoints in {self.save_folder}: every rank must see the "
                "same save folder (a shared file system)"
            )
        if self.is_main and self.start_epoch < args.epochs:  # a finished run says so in train()
            self.say_where_it_resumes(rebatched)

    def rebatch_position(self) -> str | None:
        """A run stopped mid-epoch with another global batch (--batch-size or the number of processes changed)
        continues after the same number of the epoch's images, not after the same number of batches (which would
        skip or repeat images) -> what changed, or None."""
        position, batch, saved = self.position, self.args.batch_size * self.world, self.resumed_from
        if not position:
            return None
        saved_batch = (saved.world or self.world) * saved.args.get("batch_size", self.args.batch_size)
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
        saved_world = self.resumed_from.world if self.resumed_from else None
        if saved_world is not None and saved_world != self.world:
            print(
                f"warning: {self.last} was written by {saved_world} processes, this run has "
                f"{self.world}: the global batch, lr and data order change, so this continues as a different run"
            )

    def start(self) -> None:
        """The DDP wrapper and the training step; rank 0 opens the logs and prints the run's header line."""
        self.ddp_model = self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        args, common = self.args, dict(amp_dtype=self.amp_dtype, scaler=self.scaler)
        if args.compile:
            compiled = dict(mode=args.compile_mode, backend=args.compile_backend)
            self.step = CompiledTrainStep(self.ddp_model, self.optimizer, **common, **compiled)
        else:
            step_class = CudaGraphTrainStep if args.cuda_graphs else TrainStep
            self.step = step_class(self.ddp_model, self.optimizer, **common)
        if self.is_main:
            self.record_arguments()
            self.open_log()

    def record_arguments(self) -> None:
        """SAVE_FOLDER/args.json: this run's arguments. A resumed run lists those that differ from the ones
        last.pt was trained with and goes on with the new values (a new --lr, say, applies from here on)."""
        path, current = self.save_folder / "args.json", vars(self.args)
        stored = self.resumed_from.args if self.resumed_from else {}
        changed = [
            f"--{k.replace('_', '-')} {v} (was {stored[k]})"
            for k, v in current.items()
            if k in stored and stored[k] != v and k not in STARTING_POINT_ARGS
        ]
        if changed:
            print(
                f"warning: resuming {self.last} with other arguments than it was trained with: {', '.join(changed)}; "
                "the run goes on with the new values"
            )
        write_json_atomic(path, current, "arguments file", indent=1)

    def draw_first_batch(self, batch) -> None:
        """train_batch0.jpg from the first batch a run trains on (once per save folder; no extra read)."""
        picture = self.save_folder / "train_batch0.jpg"
        if len(batch.images) and not picture.exists():
            pictures.save_batch(batch, list(self.info.category_names), picture)

    def open_log(self) -> None:
        steps_per_epoch = len(self.train_loader)
        start = (self.start_epoch, self.resumed_iteration)
        saved_step = self.resumed_from.global_step if self.resumed_from else None
        resumed_at = saved_step if saved_step is not None else start[0] * steps_per_epoch + start[1]
        self.log = RunLog(self.save_folder, self.tensorboard_folder, steps_per_epoch, resumed_at, start)
        args = self.args
        print(
            f"ssd: {args.model}, {len(self.info.category_ids)} classes, "
            f"{images_summary(self.info.num_images, self.info.dropped)}, "
            f"world {self.world}, device {self.device}, amp {self.amp_dtype}, channels_last {self.channels_last}, "
            f"cuda graphs {args.cuda_graphs}, compile {args.compile_mode if args.compile else False}, "
            f"cudnn.benchmark {self.cudnn_benchmark}, "
            f"{args.data_backend} data, lr {self.base_lr:.2e}"
        )

    # --- the epochs --------------------------------------------------------------------------------------

    def train(self) -> int:
        """The epochs from where the run stands -> EXIT_DONE, EXIT_STOPPED or EXIT_NON_FINITE."""
        if self.start_epoch >= self.args.epochs:
            if self.is_main:
                print(
                    f"already finished at epoch {self.start_epoch - 1}; nothing to train (raise --epochs or choose "
                    "a new --save-folder)"
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
        for epoch in range(self.start_epoch, self.args.epochs):
            stopped_at = self.run_epoch(epoch)
            if stopped_at:
                return stopped_at
        return None

    def run_epoch(self, epoch: int) -> str | None:
        """Train one epoch, evaluate it when due, save and log it; where the run stopped, or None."""
        stats, progress = self.train_epoch(epoch)
        if stats["stopped"]:
            return f"epoch {epoch}, iteration {progress.iteration}"
        record = self.epoch_record(epoch, stats)
        if self.evaluation_due(epoch):
            self.evaluate(progress, record)
        if self.is_main:
            self.report(record)
            self.save_epoch(epoch, record)
        # A signal during the evaluation: the epoch is saved, stop now (every rank agrees).
        if self.stop_agreed() and epoch + 1 < self.args.epochs:
            return f"the end of epoch {epoch}"
        if self.world > 1:
            dist.barrier()
        return None

    def train_epoch(self, epoch: int) -> tuple[dict, EpochProgress]:
        """The steps of one epoch, from where it stopped if it was interrupted -> (its means, where it stands)."""
        torch.manual_seed(self.args.seed + epoch)
        resumed = self.position if self.position and self.position["epoch"] == epoch else None
        progress = EpochProgress(epoch, self.device, resumed)
        stats = train_one_epoch(
            self.step,
            self.train_loader,
            self.device,
            epoch,
            lr_fn=self.lr_schedule,
            channels_last=self.channels_last,
            log_every=self.args.log_every,
            max_iters=self.args.iters_per_epoch,
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
        if self.is_main and (stop or self.schedule.due(progress.iteration - 1)):
            self.save_position(progress)
        return stop

    def stop_agreed(self) -> bool:
        """Was any rank asked to stop? (A collective: every rank calls it at the same point.)"""
        return self.agreement.any(self.stop_request.requested is not None)

    def epoch_record(self, epoch: int, stats: dict) -> dict:
        """The epoch's line of log.jsonl (the COCO metrics join it); a warning for unreadable images."""
        if stats["skipped"] and self.is_main:
            print(
                f"warning: epoch {epoch}: {len(stats['skipped'])} unreadable image(s) skipped, "
                f"e.g. {stats['skipped'][0]}"
            )
        kept = {k: v for k, v in stats.items() if k not in ("skipped", "stopped")}
        return {"epoch": epoch, **kept, "time": time.time()}

    def evaluation_due(self, epoch: int) -> bool:
        every, epochs = self.args.eval_every, self.args.epochs
        return self.val_loader is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs)

    def evaluate(self, progress: EpochProgress, record: dict) -> None:
        """COCO evaluation on every rank (a collective); the metrics join `record` on rank 0."""
        if self.is_main:  # the trained epoch is safe before the evaluation (a kill during it loses only that)
            self.save_position(progress)
        args = self.args
        shown = pictures.ValidationPictures(self.save_folder, self.val_loader.info)  # keeps the first val images
        coco, table, results, image_ids = evaluation_loop.evaluate(
            self.ddp_model,
            self.val_loader,
            self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            policy=detection_policy(args),
            max_batches=args.eval_batches,
            is_main=self.is_main,
            curves=self.curves,
            on_batch=shown,
        )
        if self.is_main:
            print(f"epoch {progress.epoch} COCO evaluation:\n{table}")
            grid = shown.save(self.model, self.device, results, image_ids)  # val_batch0_*.jpg, confusion_matrix.*
            if grid is not None:  # the predictions in TensorBoard too
                self.log.image("val/predictions", grid, progress.epoch)
            for key, value in (coco or {}).items():  # None: nothing to evaluate (said in `table`)
                record[f"coco/{key}"] = value
                self.log.scalar(f"coco/{key}", value, progress.epoch)

    def report(self, record: dict) -> None:
        """The epoch's line on the screen and its speed in TensorBoard (rank 0)."""
        self.log.scalar("train/images_per_s", record["images_per_s"], record["epoch"])
        print(
            f"epoch {record['epoch']}: loss {record['loss']:.4f} (loc {record['loss_loc']:.4f}, conf "
            f"{record['loss_conf']:.4f}), {record['images_per_s']:.1f} images/s"
            + (f", AP {record['coco/AP']:.4f}, AP50 {record['coco/AP50']:.4f}" if "coco/AP" in record else "")
        )

    # --- saving and stopping -----------------------------------------------------------------------------

    def save_epoch(self, epoch: int, record: dict) -> None:
        """Rank 0 at an epoch end: best.pt when record's AP beats the best so far, last.pt, then the log line
        (after the save: a kill before it replays the epoch, which then logs it once), the epoch copy."""
        ap = record.get("coco/AP", -1.0)
        improved, self.best_ap = ap > self.best_ap, max(self.best_ap, ap)
        self.save(epoch, None, also_best=improved)
        self.log.record(record)
        pictures.save_plots(self.save_folder, self.curves)
        if self.args.keep_checkpoints:
            keep_epoch_copy(self.last, epoch, self.args.keep_checkpoints)

    def save_position(self, progress: EpochProgress) -> None:
        """last.pt in the middle of an epoch: the weights and where the epoch stands."""
        with host_sync_point(self.device):  # reads the loss sums and the weights
            self.save(progress.epoch - 1, {**progress.state_dict(), "world": self.world})

    def save(self, epochs_done: int, position: dict | None, also_best: bool = False) -> None:
        """Write last.pt (rank 0 only; no collective inside, so rank 0 alone may decide when).
        epochs_done: the last finished epoch; position: where the next one stands (None: at its start).
        also_best: the same state to best.pt first (a kill between the two never leaves best_ap ahead of best.pt)."""
        if position is not None and not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            # Another rank's NaN reaches these weights through the all-reduce before this rank's loss shows it.
            raise NonFiniteLossError(
                f"the weights became non-finite in epoch {position['epoch']} before iteration "
                f"{position['iteration']}: not saved (last.pt is the one before); try a lower --lr"
            )
        state = training_state(
            self.model,
            self.optimizer,
            self.scaler,
            model_name=self.args.model,
            epoch=epochs_done,
            category_ids=self.info.category_ids,
            category_names=self.info.category_names,
            best_ap=self.best_ap,
            args=vars(self.args),
            position=position,
            world=self.world,
            global_step=self.log.step(
                *((position["epoch"], position["iteration"]) if position else (epochs_done + 1, 0))
            ),
        )
        if also_best:
            save_checkpoint(self.save_folder / "best.pt", state)
        save_checkpoint(self.last, state)
        self.schedule.saved()

    def stop(self, where: str) -> int:
        """After a stop request: wait until rank 0 has written last.pt (a rank leaving early would make
        torchrun tear the others down mid-write), say where to resume, EXIT_STOPPED."""
        self.stop_request.exiting()
        if self.world > 1:
            dist.barrier()
        if self.is_main:
            print(
                f"stopped ({self.stop_request.requested or 'another rank was signalled'}) at {where}: {self.last} "
                f"holds the run so far; run the same command to resume from there (exit code {EXIT_STOPPED})",
                flush=True,
            )
        if self.world > 1:
            dist.destroy_process_group()
        return EXIT_STOPPED

    def finish(self) -> int:
        """All epochs done: say where the checkpoints are, EXIT_DONE."""
        if self.is_main:
            written = ", ".join(name for name in ("last.pt", "best.pt") if (self.save_folder / name).exists())
            print(f"done: checkpoints in {self.save_folder} ({written}), log {self.save_folder / 'log.jsonl'}")
        if self.world > 1:
            # Tear down together: without an evaluation at the end nothing else waits for rank 0's last
            # save, and a rank destroying its gloo group while a peer still holds the connection can abort
            # with "terminate called without an active exception" (seen once in 4 CI runs).
            dist.barrier()
            dist.destroy_process_group()
        return EXIT_DONE
