"""The GPU training paths: CUDA-graph steps equal eager steps, one graph for targets + loss +
post-processing, no host sync between log points. (CUDA only: they skip without a GPU.)"""

import pytest
import torch
from conftest import CUDA

from ssdfast import ops
from ssdfast.anchors import SSD300_RESNET50, default_boxes
from ssdfast.models import build_model
from ssdfast.postprocess import postprocess
from ssdfast.training.epoch import train_one_epoch
from ssdfast.training.loss import MultiBoxLoss
from ssdfast.training.optimizer import zero_momentum_buffers
from ssdfast.training.step import CudaGraphTrainStep, TrainStep

pytestmark = [CUDA, pytest.mark.cuda]


def ground_truth(batch, max_boxes=8, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, max_boxes, 2, generator=g) * 0.6
    wh = torch.rand(batch, max_boxes, 2, generator=g) * 0.35 + 0.05
    labels = torch.randint(1, 5, (batch, max_boxes), generator=g)
    labels[:, max_boxes // 2 :] = 0  # padding
    return torch.cat([xy, xy + wh], -1).to(device), labels.to(device)


def train(step_cls, amp_dtype, steps=4, batch=4):
    """Weights after `steps` SGD steps of SSDLite on fixed random data (different data each step)."""
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=4, backbone_weights="none").cuda()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=torch.tensor(0.01, device="cuda"),
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        fused=True,
    )
    step = step_cls(model, optimizer, amp_dtype=amp_dtype)
    losses = []
    for i in range(steps):
        g = torch.Generator().manual_seed(100 + i)
        images = torch.randn(batch, 3, 300, 300, generator=g).cuda()
        boxes, labels = ground_truth(batch, seed=i)
        losses.append(step(images, boxes, labels).total)
    return model.state_dict(), torch.stack(losses)


@pytest.mark.parametrize("amp_dtype,tol", [(None, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_graph_steps_equal_eager_steps(amp_dtype, tol):
    """The warm-up before capture is undone: N replays give the weights of N eager steps.
    Tolerance: kernels differ between capture and eager runs only in cuDNN's algorithm choice, so
    fp32 agrees to ~1e-4 relative and bf16 to its 8-bit mantissa."""
    torch.backends.cudnn.deterministic = True
    try:
        eager, eager_losses = train(TrainStep, amp_dtype)
        graph, graph_losses = train(CudaGraphTrainStep, amp_dtype)
    finally:
        torch.backends.cudnn.deterministic = False
    torch.testing.assert_close(graph_losses, eager_losses, rtol=tol, atol=tol)
    for name, value in eager.items():
        torch.testing.assert_close(graph[name].float(), value.float(), rtol=tol, atol=tol, msg=name)


def test_one_graph_for_targets_loss_and_postprocess():
    """match_encode + MultiBox loss + post-processing captured once, replayed on new data: equal to eager."""
    anchors = default_boxes(SSD300_RESNET50).cuda()
    num_anchors, classes, batch = len(anchors), 6, 3
    loss_fn = MultiBoxLoss()

    def pipeline(boxes, labels, locs, confs):
        offsets, target_labels = ops.match_encode(boxes, labels, anchors)
        loss = loss_fn(locs, confs, offsets, target_labels)
        dets = postprocess(locs, confs, anchors, SSD300_RESNET50.variances)
        return loss.total, dets.boxes, dets.scores, dets.labels, dets.counts

    def inputs(seed):
        g = torch.Generator().manual_seed(seed)
        boxes, labels = ground_truth(batch, seed=seed)
        return (
            boxes,
            labels,
            (0.5 * torch.randn(batch, num_anchors, 4, generator=g)).cuda(),
            (3 * torch.randn(batch, num_anchors, classes + 1, generator=g)).cuda(),
        )

    static = [t.clone() for t in inputs(0)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        pipeline(*static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = pipeline(*static)
    for seed in (1, 2):
        new = inputs(seed)
        for buffer, value in zip(static, new):
            buffer.copy_(value)
        graph.replay()
        expected = pipeline(*new)
        for got, want in zip(static_out, expected):
            torch.testing.assert_close(got, want)


class FixedLoader:
    """A loader of the same few batches (on the host, pinned like the DataLoader's)."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch, start_batch=0):
        assert start_batch == 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16_gradscaler"])
def test_no_host_sync_between_log_points(amp_dtype):
    """train_one_epoch under torch.cuda.set_sync_debug_mode("error"): any sync outside the marked
    log points raises, Batch.to's normalisation of uint8 images included. fp16 includes GradScaler with
    fused SGD (its inf check stays on the device)."""
    from ssdfast.data.batch import Batch

    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=4, backbone_weights="none").cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    zero_momentum_buffers(optimizer)  # as build_optimizer does for fused SGD
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step = TrainStep(model, optimizer, amp_dtype=amp_dtype, scaler=scaler)
    batches = []
    for i in range(6):
        boxes, labels = ground_truth(2, seed=i, device="cpu")
        batches.append(
            Batch(
                # uint8, as the loaders ship them: Batch.to normalises on the device (no host copy allowed there)
                torch.randint(0, 256, (2, 3, 300, 300), dtype=torch.uint8).pin_memory(),
                boxes.pin_memory(),
                labels.pin_memory(),
                torch.arange(2),
                torch.full((2, 2), 300),
                (),
            )
        )
    train_one_epoch(step, FixedLoader(batches[:2]), torch.device("cuda"), 0, lr_fn=lambda *a: 0.01)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = train_one_epoch(step, FixedLoader(batches), torch.device("cuda"), 1, lr_fn=lambda *a: 0.01, log_every=3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(torch.tensor(stats["loss"]))
