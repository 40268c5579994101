"""The epoch loop: train_one_epoch, and EpochProgress (where an epoch stands, and where an
interrupted one resumes). One step lives in step.py, the lr in optimizer.py.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from ssdfast.machinery.runtime import host_sync_point
from ssdfast.training.optimizer import set_lr
from ssdfast.training.step import TrainStep


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN/inf: the run stops without saving over the last checkpoint."""


class EpochProgress:
    """Where an epoch stands: batches consumed, loss sums, images and time so far, unreadable images.

    The sums stay on the device (read at log points only); state_dict() reads them (a host sync) for
    a mid-epoch checkpoint, EpochProgress(epoch, device, state) puts them back so a restarted epoch
    logs the same means."""

    def __init__(self, epoch: int, device, state: dict | None = None):
        state = state or {}
        self.epoch = epoch
        self.iteration = state.get("iteration", 0)  # the next batch of the epoch to train
        self.totals = torch.tensor(state.get("totals", [0.0, 0.0, 0.0]), device=device)
        self.first_bad = torch.tensor(-1, device=device)  # iteration of the first non-finite loss, on the device
        self.seen = state.get("seen", 0)  # batches trained (without the empty ones)
        self.images = state.get("images", 0)
        self.elapsed = state.get("elapsed", 0.0)  # seconds of training before the last restart
        self.skipped = list(state.get("skipped", []))
        self.started = time.perf_counter()

    def add(self, iteration: int, loss, images: int) -> None:
        """Count one trained batch. The non-finite check stays on the device (a Python int scalar is no
        host-device copy); it is read at the next log point only."""
        parts = torch.stack(list(loss))
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(parts).all(), iteration, self.first_bad)
        self.totals += torch.nan_to_num(parts)
        self.seen += 1
        self.images += images

    def check_finite(self, all_ranks: bool = False) -> None:
        """Host sync: raise NonFiniteLossError if a step since the epoch start had a NaN/inf loss.
        all_ranks: on any rank (a collective: every rank at the same iteration), so that all stop together."""
        bad = self.first_bad
        if all_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            bad = bad.clone()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad = int(bad)
        if bad >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch}, iteration {bad}: stopping "
                "(the last checkpoint is untouched); try a lower --lr or --warmup"
            )

    def means(self) -> list[float]:
        """Mean loss, loc, conf over the batches so far (host sync)."""
        return (self.totals / max(self.seen, 1)).tolist()

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        """What a mid-epoch checkpoint stores (host sync); refuses to store a diverged run."""
        self.check_finite()
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "totals": self.totals.tolist(),
            "seen": self.seen,
            "images": self.images,
            "elapsed": self.seconds(),
            "skipped": self.skipped[:100],
        }


def train_one_epoch(
    step: TrainStep,
    loader,
    device,
    epoch: int,
    *,
    lr_fn,
    channels_last=False,
    log_every=10,
    max_iters=None,
    is_main=True,
    on_log=None,
    progress: EpochProgress | None = None,
    after_step=None,
    on_batch=None,
) -> dict:
    """One pass over `loader`, from progress.iteration on (a restarted epoch). Returns mean loss parts,
    images/s, the unreadable images seen and whether after_step asked to stop.

    lr_fn(epoch, iteration, iters_per_epoch) -> lr; on_log(epoch, iteration, {loss, loss_loc,
    loss_conf, lr}) at every log point; after_step(progress) -> bool runs after every step (mid-epoch
    checkpoints, stop requests): True ends the epoch early with stats["stopped"] = True. on_batch(batch)
    sees each batch as the loader gives it, before the step (pictures)."""
    step.model.train()
    progress = progress or EpochProgress(epoch, device)
    loader.set_epoch(epoch, start_batch=progress.iteration)  # a restart skips what was trained already
    num_iters = len(loader) if max_iters is None else min(len(loader), max_iters)
    stopped, lr = False, lr_fn(epoch, progress.iteration, num_iters)
    bar = tqdm(
        total=num_iters,
        initial=progress.iteration,
        desc=f"epoch {epoch}",
        disable=not is_main,
        dynamic_ncols=True,
        leave=False,
    )
    for it, batch in enumerate(loader, start=progress.iteration):
        if it >= num_iters:
            break
        progress.skipped += batch.skipped
        if on_batch is not None:
            on_batch(batch)
        if len(batch.images) > 0:
            lr = lr_fn(epoch, it, num_iters)
            set_lr(step.optimizer, lr)
            batch = batch.to(device, channels_last=channels_last)
            progress.add(it, step(batch.images, batch.boxes, batch.labels), len(batch.images))
        progress.iteration = it + 1
        if (it + 1) % log_every == 0 or it + 1 == num_iters:
            log_point(progress, device, lr, bar, on_log)
        bar.update(1)
        if after_step is not None and after_step(progress):
            stopped = True
            break
    bar.close()
    return epoch_stats(progress, device, lr, stopped)


def log_point(progress: EpochProgress, device, lr: float, bar, on_log) -> None:
    """The loop's host sync every log_every iterations: the NaN check on every rank, the running means."""
    with host_sync_point(device):
        progress.check_finite(all_ranks=True)
        mean = progress.means()
    bar.set_postfix(loss=f"{mean[0]:.3f}", lr=f"{lr:.2e}")
    if on_log is not None:
        on_log(
            progress.epoch,
            progress.iteration - 1,
            {"loss": mean[0], "loss_loc": mean[1], "loss_conf": mean[2], "lr": lr},
        )


def epoch_stats(progress: EpochProgress, device, lr: float, stopped: bool) -> dict:
    """The epoch's means, images/s over all ranks, unreadable images; an epoch that trained nothing is an error."""
    if progress.seen == 0 and not stopped:
        # nothing trained: say so rather than log a loss of 0 and an untrained checkpoint
        raise ValueError(
            f"epoch {progress.epoch}: no batch had a readable image ({len(progress.skipped)} unreadable, "
            f"e.g. {progress.skipped[0] if progress.skipped else 'none'}): check the image files"
        )
    with host_sync_point(device):
        if device.type == "cuda":
            torch.cuda.synchronize()
        progress.check_finite(all_ranks=True)
        mean = progress.means()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {
        "loss": mean[0],
        "loss_loc": mean[1],
        "loss_conf": mean[2],
        "lr": lr,
        "images_per_s": progress.images * world / max(progress.seconds(), 1e-9),
        "skipped": progress.skipped,
        "stopped": stopped,
    }
