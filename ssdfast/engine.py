"""Training and evaluation loops shared by the tools.

The epoch loop (train_one_epoch, with EpochProgress: where an interrupted epoch resumes), the lr
schedule, and the evaluation loop (predict -> COCO metrics). One training step lives in train_step.py.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from .anchors import SSD_DEFAULTS
from .coco_eval import coco_evaluate, detections_to_coco, gather_to_rank0
from .inference import as_detector
from .runtime import host_sync_point
from .train_step import TrainStep


class NonFiniteLossError(RuntimeError):
    pass


def lr_at(base_lr: float, epoch: int, iteration: int, iters_per_epoch: int, milestones, warmup_iters: int) -> float:
    """Step schedule x0.1 at each milestone epoch, with linear warmup over the first warmup_iters."""
    lr = base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    step = epoch * iters_per_epoch + iteration
    if warmup_iters > 0 and step < warmup_iters:
        lr *= (step + 1) / warmup_iters
    return lr


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured CUDA graph reads this tensor
        else:
            group["lr"] = lr


class EpochProgress:
    """Where an epoch stands: batches consumed, loss sums, images and time so far, unreadable images.

    The sums stay on the device (read at log points only); state_dict() reads them (a host sync) for
    a mid-epoch checkpoint, from_state() puts them back so a restarted epoch logs the same means."""

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

    def check_finite(self, all_ranks: bool = False) -> None:
        """Host sync: raise NonFiniteLossError if a step since the epoch start had a NaN/inf loss.
        all_ranks: on any rank (a collective: every rank at the same iteration), so that all stop together."""
        bad = self.first_bad
        if all_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            bad = bad.clone()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad = int(bad)
        if bad >= 0:
            raise NonFiniteLossError(f"non-finite loss at epoch {self.epoch}, iteration {bad}: stopping "
                                     "(the last checkpoint is untouched); try a lower --lr or --warmup")

    def means(self) -> list[float]:
        """Mean loss, loc, conf over the batches so far (host sync)."""
        return (self.totals / max(self.seen, 1)).tolist()

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        """What a mid-epoch checkpoint stores (host sync); refuses to store a diverged run."""
        self.check_finite()
        return {"epoch": self.epoch, "iteration": self.iteration, "totals": self.totals.tolist(), "seen": self.seen,
                "images": self.images, "elapsed": self.seconds(), "skipped": self.skipped[:100]}


def train_one_epoch(step: TrainStep, loader, device, epoch: int, *, lr_fn, channels_last=False, log_every=10,
                    max_iters=None, is_main=True, on_log=None, progress: EpochProgress | None = None,
                    after_step=None) -> dict:
    """One pass over `loader`, from progress.iteration on (a restarted epoch). Returns mean loss parts,
    images/s, the unreadable images seen and whether after_step asked to stop.

    after_step(progress) -> bool runs after every step (mid-epoch checkpoints, stop requests); True
    ends the epoch early with stats["stopped"] = True."""
    model = step.model
    model.train()
    progress = progress or EpochProgress(epoch, device)
    loader.set_epoch(epoch, start_batch=progress.iteration)  # a restart skips what was trained already
    num_iters = len(loader) if max_iters is None else min(len(loader), max_iters)
    stopped, lr = False, lr_fn(epoch, progress.iteration, num_iters)
    bar = tqdm(total=num_iters, initial=progress.iteration, desc=f"epoch {epoch}", disable=not is_main,
               dynamic_ncols=True, leave=False)
    for it, batch in enumerate(loader, start=progress.iteration):
        if it >= num_iters:
            break
        progress.skipped += batch.skipped
        if len(batch.images) > 0:
            lr = lr_fn(epoch, it, num_iters)
            set_lr(step.optimizer, lr)
            batch = batch.to(device, channels_last=channels_last)
            loss = step(batch.images, batch.boxes, batch.labels)
            parts = torch.stack(list(loss))
            # The non-finite check stays on the device (a Python int scalar is no host-device copy);
            # it is read at the next log point only.
            progress.first_bad = torch.where((progress.first_bad < 0) & ~torch.isfinite(parts).all(), it,
                                             progress.first_bad)
            progress.totals += torch.nan_to_num(parts)
            progress.seen += 1
            progress.images += len(batch.images)
        progress.iteration = it + 1
        if (it + 1) % log_every == 0 or it + 1 == num_iters:
            with host_sync_point(device):  # the loop's sync, every log_every iterations
                progress.check_finite(all_ranks=True)
                mean = progress.means()
            bar.set_postfix(loss=f"{mean[0]:.3f}", lr=f"{lr:.2e}")
            if on_log is not None:
                on_log(epoch, it, {"loss": mean[0], "loss_loc": mean[1], "loss_conf": mean[2], "lr": lr})
        bar.update(1)
        if after_step is not None and after_step(progress):
            stopped = True
            break
    bar.close()
    if progress.seen == 0 and not stopped:
        # nothing trained: say so rather than log a loss of 0 and an untrained checkpoint
        raise ValueError(f"epoch {epoch}: no batch had a readable image ({len(progress.skipped)} unreadable, e.g. "
                         f"{progress.skipped[0] if progress.skipped else 'none'}): check the image files")
    with host_sync_point(device):
        if device.type == "cuda":
            torch.cuda.synchronize()
        progress.check_finite(all_ranks=True)
        mean = progress.means()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return {"loss": mean[0], "loss_loc": mean[1], "loss_conf": mean[2], "lr": lr,
            "images_per_s": progress.images * world / max(progress.seconds(), 1e-9), "skipped": progress.skipped,
            "stopped": stopped}


@torch.no_grad()
def predict(model, loader, device, *, amp_dtype=None, channels_last=False, nms_threshold=SSD_DEFAULTS.nms_threshold,
            score_threshold=SSD_DEFAULTS.score_threshold,
            category_ids, max_batches=None, is_main=True) -> tuple[list[dict], list[int], list[str]]:
    """Run the detector over `loader` -> (COCO results, evaluated image ids, unreadable images) of this rank.
    model: an SSD module (+ ssdfast.postprocess with the thresholds given) or any detector of
    ssdfast.inference.as_detector (an exported file: thresholds given when it was loaded)."""
    detector = as_detector(model, score_threshold=score_threshold, nms_threshold=nms_threshold, amp_dtype=amp_dtype)
    results, image_ids, skipped = [], [], []
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, batch in enumerate(tqdm(loader, total=total, desc="eval", disable=not is_main, leave=False)):
        if i >= total:
            break
        skipped += batch.skipped
        if len(batch.images) == 0:
            continue
        dets = detector(batch.to(device, channels_last=channels_last).images)
        results += detections_to_coco(dets, batch.image_ids, batch.sizes, category_ids)
        image_ids += batch.image_ids.tolist()
    return results, image_ids, skipped


def evaluate(model, loader, device, *, backend="pycocotools", **kwargs) -> tuple[dict | None, str, list[dict], list]:
    """COCO evaluation over a (possibly sharded) loader. Rank 0 gets (stats, table, all results,
    evaluated image ids); other ranks get (None, "", [], [])."""
    results, image_ids, skipped = predict(model, loader, device, category_ids=loader.info.category_ids, **kwargs)
    results, image_ids = gather_to_rank0(results), gather_to_rank0(image_ids)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None, "", [], []
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) left out of evaluation, e.g. {skipped[0]}")
    stats, table = coco_evaluate(loader.info.coco, results, image_ids=image_ids, backend=backend)
    return stats, table, results, image_ids

