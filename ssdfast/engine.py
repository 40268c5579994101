"""Training and evaluation loops shared by the tools.

The training step (TrainStep): loss targets are built on the device by the fused match+encode op
from the padded ground truth, so the step has static shapes; CudaGraphTrainStep captures the whole
step (forward, loss, backward, optimizer) once and replays it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from . import ops
from .anchors import SSD_DEFAULTS
from .coco_eval import coco_evaluate, detections_to_coco, gather_to_rank0
from .deployed import Deployed
from .loss import LossOutput, MultiBoxLoss
from .postprocess import postprocess


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


class NonFiniteLossError(RuntimeError):
    pass


@contextmanager
def host_sync_point(device: torch.device):
    """Marks where the loop reads from the GPU on purpose (a host sync). Under
    torch.cuda.set_sync_debug_mode("error") any other sync fails loudly, so a test can prove the
    loop syncs only here."""
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


class TrainStep:
    """Eager step: match_encode -> forward (autocast) -> MultiBox loss (fp32) -> backward -> step.

    images [B, 3, H, W], gt_boxes [B, G, 4], gt_labels [B, G] -> LossOutput (no host sync).
    targets_fn builds the loss targets: the compiled op by default, or its twin
    ssdfast.reference.match_encode (what the benchmarks compare)."""

    def __init__(self, model, optimizer, amp_dtype=None, scaler=None, loss_fn=None, targets_fn=ops.match_encode):
        self.model, self.optimizer, self.amp_dtype, self.scaler = model, optimizer, amp_dtype, scaler
        self.loss_fn = loss_fn or MultiBoxLoss()
        self.targets_fn = targets_fn
        self.anchors = unwrap(model).anchors

    def compute(self, images, gt_boxes, gt_labels) -> LossOutput:
        offsets, labels = self.targets_fn(gt_boxes, gt_labels, self.anchors)
        with autocast(images.device, self.amp_dtype):
            locs, confs = self.model(images)
        loss = self.loss_fn(locs, confs, offsets, labels)
        if self.scaler is not None:
            self.scaler.scale(loss.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.total.backward()
            self.optimizer.step()
        return LossOutput(*(t.detach() for t in loss))

    def __call__(self, images, gt_boxes, gt_labels) -> LossOutput:
        self.optimizer.zero_grad(set_to_none=True)
        return self.compute(images, gt_boxes, gt_labels)


class CudaGraphTrainStep(TrainStep):
    """The whole TrainStep captured in one CUDA graph on the first call, then replayed.

    Inputs are copied into static buffers (the shapes must not change: drop_last and padded G do
    that). Requirements, checked by the caller: a CUDA device, one process (DDP capture is not
    supported: tools/train.py refuses it), no GradScaler (its step syncs with the host; use bf16 or
    fp32), and an optimizer whose lr is a device tensor (fused SGD) so that lr changes reach the
    replayed graph.

    The first call is not a throw-away: the warm-up steps that must run before a capture (they
    allocate optimizer state and let cuDNN pick its algorithms) are undone afterwards, so N graph
    steps give the weights N eager steps give.
    """

    def __init__(self, *args, warmup_steps: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if self.scaler is not None:
            raise ValueError("CUDA graphs cannot capture a GradScaler step (it syncs with the host): use bf16 or fp32")
        for group in self.optimizer.param_groups:
            if group.get("dampening", 0) != 0:
                raise ValueError("CUDA graphs need SGD with dampening 0 (the warm-up is undone by zeroing momentum)")
        self.warmup_steps = warmup_steps
        self.graph = None

    def _snapshot(self) -> tuple[dict, dict]:
        """Copies of the model state (parameters and BN buffers) and of the optimizer state."""
        model = {k: v.clone() for k, v in self.model.state_dict().items()}
        optim = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                 for p, state in self.optimizer.state.items()}
        return model, optim

    def _restore(self, snapshot: tuple[dict, dict]) -> None:
        """Put back what the warm-up changed, in place (the graph will read these very tensors).
        Optimizer state the warm-up created is zeroed: zero is the state an optimizer starts from
        (Adam's moments) or behaves exactly like (SGD's momentum buffer with dampening 0)."""
        model, optim = snapshot
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(model[k])
            for p, state in self.optimizer.state.items():
                for k, v in state.items():
                    if not torch.is_tensor(v):
                        continue
                    if p in optim:
                        v.copy_(optim[p][k])
                    else:
                        v.zero_()

    def _capture(self, images, gt_boxes, gt_labels) -> None:
        self.static = [images.clone(), gt_boxes.clone(), gt_labels.clone()]
        snapshot = self._snapshot()
        # Warm up on a side stream (allocates optimizer state, picks cuDNN algorithms), then undo it.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                super().__call__(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snapshot)
        self.graph = torch.cuda.CUDAGraph()
        # Grads to None: the captured backward then allocates them from the graph's private pool
        # and writes them fresh each replay (no stale accumulation from the warm-up).
        self.optimizer.zero_grad(set_to_none=True)
        # thread_local: CUDA calls from other threads (the DataLoader's pin-memory thread, DALI's
        # prefetch) go on during the capture; the default global mode would fail on them.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_loss = self.compute(*self.static)

    def __call__(self, images, gt_boxes, gt_labels) -> LossOutput:
        if self.graph is None:
            self._capture(images, gt_boxes, gt_labels)
        for buffer, value in zip(self.static, (images, gt_boxes, gt_labels)):
            buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        # Clone: the next replay overwrites static_loss in place.
        return LossOutput(*(t.clone() for t in self.static_loss))


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
    model: an SSD module (+ ssdfast.postprocess with the thresholds given), or an exported detector
    (ssdfast.deployed.Deployed: post-processing inside, thresholds given when it was loaded)."""
    deployed = isinstance(model, Deployed)
    if not deployed:
        model.eval()
    results, image_ids, skipped = [], [], []
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, batch in enumerate(tqdm(loader, total=total, desc="eval", disable=not is_main, leave=False)):
        if i >= total:
            break
        skipped += batch.skipped
        if len(batch.images) == 0:
            continue
        images = batch.to(device, channels_last=channels_last).images
        if deployed:
            dets = model(images)
        else:
            with autocast(device, amp_dtype):
                locs, confs = model(images)
            dets = postprocess(locs, confs, unwrap(model).anchors, score_threshold=score_threshold,
                               nms_threshold=nms_threshold)
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

