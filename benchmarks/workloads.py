"""SSD-shaped workloads for the benchmarks: deterministic inputs, and the data-fed training epoch."""

from __future__ import annotations

import torch
from conftest import run

from ssdfast.anchors import SSD300_RESNET50, default_boxes
from ssdfast.models import build_model
from ssdfast.training.optimizer import zero_momentum_buffers
from ssdfast.training.step import TrainStep


def coco_like_ground_truth(batch: int = 32, max_boxes: int = 50, mean_boxes: float = 7.0, seed: int = 0):
    """Padded ground truth [B, G, 4] / labels [B, G]: per-image counts ~ geometric with mean ~7, cap 50
    (COCO train2017: mean 7.3 boxes per image)."""
    g = torch.Generator().manual_seed(seed)
    # Geometric counts by inverse CDF from the seeded generator (Distribution.sample would draw from
    # the global RNG, making the workload differ from run to run).
    u = torch.rand(batch, generator=g).clamp(min=1e-12)
    counts = (torch.log(u) / torch.log(torch.tensor(1 - 1 / mean_boxes))).floor().long() + 1
    counts = counts.clamp(max=max_boxes)
    counts[0] = max_boxes  # at least one crowded image, as in COCO
    xy = torch.rand(batch, max_boxes, 2, generator=g) * 0.8
    wh = torch.rand(batch, max_boxes, 2, generator=g) ** 2 * 0.6 + 0.01  # many small boxes, some large
    boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=-1)
    labels = torch.randint(1, 81, (batch, max_boxes), generator=g)
    labels[torch.arange(max_boxes)[None, :] >= counts[:, None]] = 0
    return boxes * (labels > 0)[..., None], labels


def ssd300_outputs(batch: int = 32, classes: int = 80, seed: int = 0):
    """Plausible SSD300 outputs: mostly confident background, a few hundred object-like anchors per image."""
    g = torch.Generator().manual_seed(seed)
    anchors = default_boxes(SSD300_RESNET50)
    num = len(anchors)
    locs = 0.3 * torch.randn(batch, num, 4, generator=g)
    confs = torch.randn(batch, num, classes + 1, generator=g)
    confs[..., 0] += 4.0
    objects = torch.rand(batch, num, generator=g) < 0.03
    cls = torch.randint(1, classes + 1, (batch, num), generator=g)
    confs[objects, cls[objects]] += 7.0
    return locs, confs, anchors


def nms_candidates(batch: int = 32, classes: int = 80, per_class: int = 200, seed: int = 0):
    """The post-processing NMS workload: per image, `classes` x `per_class` candidates (decoded SSD
    boxes, clustered around objects as real detections are) with scores and class ids."""
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    centres = torch.rand(batch, 40, 2, generator=g)  # 40 objects per image
    which = torch.randint(0, 40, (batch, n), generator=g)
    c = centres.gather(1, which[..., None].expand(-1, -1, 2)) + 0.03 * torch.randn(batch, n, 2, generator=g)
    wh = (0.05 + 0.3 * torch.rand(batch, 40, 2, generator=g)).gather(1, which[..., None].expand(-1, -1, 2))
    wh = wh * (1 + 0.2 * torch.randn(batch, n, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=-1)
    scores = torch.rand(batch, n, generator=g) ** 3  # most candidates weak
    labels = torch.arange(1, classes + 1).repeat_interleave(per_class).expand(batch, -1).contiguous()
    return boxes, scores, labels


def ssd300_fp16_step() -> TrainStep:
    """The step the data-fed benchmarks time: SSD300 (80 classes) on CUDA, channels_last, fp16 autocast with
    GradScaler, fused SGD; seeded, cuDNN autotuning on (as the tools run on CUDA)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = build_model("ssd", num_classes=80).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=True)
    zero_momentum_buffers(optimizer)  # as build_optimizer does: a skipped first fp16 step must not leave garbage
    return TrainStep(model, optimizer, amp_dtype=torch.float16, scaler=torch.amp.GradScaler("cuda"))


def time_fed_epoch(
    benchmark, train_step: TrainStep, loader, batch: int, *, step_alone: bool, device: str = "cuda", rounds: int = 3
) -> None:
    """Time one training epoch (`rounds` after 1 warm-up): `train_step` on every batch of `loader` (a
    candidate), or (step_alone: the baseline) on the loader's first batch len(loader) times, the rate the
    data path has to keep up with. Equal rates: the data keeps up."""
    batches = len(loader)
    if step_alone:
        first = next(iter(loader)).to(device, channels_last=True)
        fixed = (first.images.clone(), first.boxes.clone(), first.labels.clone())  # kept whatever the loader reuses

        def epoch():
            for _ in range(batches):
                loss = train_step(*fixed)
            return loss
    else:

        def epoch():
            for data in loader:
                data = data.to(device, channels_last=True)
                loss = train_step(data.images, data.boxes, data.labels)
            return loss

    role = "baseline" if step_alone else "candidate"
    run(benchmark, epoch, role=role, items=batch * batches, rounds=rounds, warmup=1, device=device)
