"""One training step: match_encode -> forward -> MultiBox loss -> backward -> optimizer step.

Loss targets are built on the device by the fused match+encode op from the padded ground truth, so the
step has static shapes; CudaGraphTrainStep captures the whole step once and replays it.
"""

from __future__ import annotations

import torch

from .. import ops
from ..loss import LossOutput, MultiBoxLoss
from ..runtime import autocast, unwrap


class TrainStep:
    """Eager step: match_encode -> forward (autocast) -> MultiBox loss (fp32) -> backward -> step.

    images [B, 3, H, W], gt_boxes [B, G, 4], gt_labels [B, G] -> LossOutput (no host sync).
    targets_fn builds the loss targets: the compiled op by default, or its twin
    ssdfast.reference.match_encode (what the benchmarks compare); it encodes with the model's own
    anchor_spec variances, the ones its outputs are decoded with."""

    def __init__(self, model, optimizer, amp_dtype=None, scaler=None, loss_fn=None, targets_fn=ops.match_encode):
        self.model, self.optimizer, self.amp_dtype, self.scaler = model, optimizer, amp_dtype, scaler
        self.loss_fn = loss_fn or MultiBoxLoss()
        self.targets_fn = targets_fn
        self.anchors, self.spec = unwrap(model).anchors, unwrap(model).anchor_spec

    def compute(self, images, gt_boxes, gt_labels) -> LossOutput:
        offsets, labels = self.targets_fn(
            gt_boxes,
            gt_labels,
            self.anchors,
            center_variance=self.spec.center_variance,
            size_variance=self.spec.size_variance,
        )
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
        optim = {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for p, state in self.optimizer.state.items()
        }
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
