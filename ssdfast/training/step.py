"""One training step: match_encode -> forward -> MultiBox loss -> backward -> optimizer step.

Loss targets are built on the device by the fused match+encode op from the padded ground truth, so the
step has static shapes; CudaGraphTrainStep captures the whole step once and replays it, CompiledTrainStep
compiles targets + forward + loss with torch.compile.
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from ssdfast import ops
from ssdfast.defaults import COMPILE_MODES
from ssdfast.machinery.runtime import autocast, unwrap
from ssdfast.training.loss import LossOutput, MultiBoxLoss


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
        loss = self.forward_loss(images, gt_boxes, gt_labels)
        self.backward_step(loss)
        return LossOutput(*(t.detach() for t in loss))

    def forward_loss(self, images, gt_boxes, gt_labels) -> LossOutput:
        """Targets (with the model's variances) -> forward (autocast) -> loss: what CompiledTrainStep compiles."""
        offsets, labels = self.targets_fn(
            gt_boxes,
            gt_labels,
            self.anchors,
            center_variance=self.spec.center_variance,
            size_variance=self.spec.size_variance,
        )
        with autocast(images.device, self.amp_dtype):
            locs, confs = self.model(images)
        return self.loss_fn(locs, confs, offsets, labels)

    def backward_step(self, loss: LossOutput) -> None:
        """Backward and the optimizer step, through the GradScaler with fp16."""
        if self.scaler is not None:
            self.scaler.scale(loss.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.total.backward()
            self.optimizer.step()

    def __call__(self, images, gt_boxes, gt_labels) -> LossOutput:
        self.optimizer.zero_grad(set_to_none=True)
        return self.compute(images, gt_boxes, gt_labels)


class CompiledTrainStep(TrainStep):
    """TrainStep with targets -> forward (autocast) -> loss compiled by torch.compile (dynamic=False:
    the shapes are static; one graph, fullgraph), compiled on the first call.

    Compiled: that forward and, through AOTAutograd, its backward (loss.backward() runs the compiled
    backward graph). Eager: the GradScaler (scale, unscale and update stay outside the graph, so fp16
    works as in TrainStep) and the optimizer step (fused SGD is one kernel already). The model is not
    wrapped, so its state_dict keys do not change (no `_orig_mod.`): checkpoints load either way.
    Under DDP the trace breaks at DDP's forward (its bookkeeping runs eagerly): the wrapped model, the
    targets and the loss compile as separate graphs, the model's split at the gradient buckets by
    dynamo's DDPOptimizer so that the all-reduces can overlap the backward (the split shows in
    TORCH_LOGS=ddp_graphs; docs/training.md "Compiled step").
    mode: torch.compile's ('reduce-overhead' and 'max-autotune' also replay the compiled forward and
    backward from CUDA graphs). backend: 'inductor' (generated kernels) or 'aot_eager' (the same graphs
    run by eager kernels: compiles in seconds; what the CPU tests compare with the eager step)."""

    def __init__(self, *args, mode: str = "default", backend: str = "inductor", **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of: {', '.join(COMPILE_MODES)}")
        # The modes with CUDA graphs overwrite their outputs at the next replay: the loss is copied out.
        self.copy_outputs = mode != "default"
        self.forward_loss = torch.compile(
            self.forward_loss,
            dynamic=False,
            fullgraph=not isinstance(self.model, DistributedDataParallel),
            backend=backend,
            mode=mode if backend == "inductor" else None,
        )

    def __call__(self, images, gt_boxes, gt_labels) -> LossOutput:
        if not self.copy_outputs:
            return super().__call__(images, gt_boxes, gt_labels)
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last one's graph outputs may go
        return LossOutput(*(t.clone() for t in super().__call__(images, gt_boxes, gt_labels)))


class CudaGraphTrainStep(TrainStep):
    """The whole TrainStep captured in one CUDA graph on the first call, then replayed.

    Inputs are copied into static buffers (the shapes must not change: drop_last and padded G do
    that). Requirements, checked by the caller: a CUDA device, one process (DDP capture is not
    supported: tools/train.py refuses it), and an optimizer whose lr is a device tensor (fused SGD)
    so that lr changes reach the replayed graph. A GradScaler (fp16) needs the fused optimizer too:
    GradScaler.step hands it the inf check as a device tensor and the kernel skips the step itself,
    where the unfused path reads the check on the host (`.item()` in GradScaler._maybe_opt_step), which
    no graph can hold. Its scale and growth tracker are created before the warm-up, so the graph reads
    and updates those very tensors, and put back after it like the weights.

    The first call is not a throw-away: the warm-up steps that must run before a capture (they
    allocate optimizer state and let cuDNN pick its algorithms) are undone afterwards, so N graph
    steps give the weights N eager steps give.
    """

    def __init__(self, *args, warmup_steps: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if self.scaler is not None and not all(group.get("fused") for group in self.optimizer.param_groups):
            raise ValueError(
                "CUDA graphs with fp16 (a GradScaler) need a fused optimizer: its inf check stays on the device"
            )
        for group in self.optimizer.param_groups:
            if group.get("dampening", 0) != 0:
                raise ValueError("CUDA graphs need SGD with dampening 0 (the warm-up is undone by zeroing momentum)")
        self.warmup_steps = warmup_steps
        self.graph = None

    def _snapshot(self) -> tuple[dict, dict, dict | None]:
        """Copies of the model state (parameters and BN buffers), of the optimizer state and of the
        scaler's (scale and growth tracker, created here if the scaler has not run yet)."""
        model = {k: v.clone() for k, v in self.model.state_dict().items()}
        optim = {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
            for p, state in self.optimizer.state.items()
        }
        if self.scaler is not None:
            self.scaler.scale(self.anchors.new_ones(()))  # creates its scale tensors now, before the capture
        return model, optim, self.scaler.state_dict() if self.scaler is not None else None

    def _restore(self, snapshot: tuple[dict, dict, dict | None]) -> None:
        """Put back what the warm-up changed, in place (the graph will read these very tensors).
        Optimizer state the warm-up created is zeroed: zero is the state an optimizer starts from
        (Adam's moments) or behaves exactly like (SGD's momentum buffer with dampening 0). The
        scaler's load_state_dict fills its existing tensors in place."""
        model, optim, scaler = snapshot
        if scaler:  # None without a scaler, {} from a disabled one
            self.scaler.load_state_dict(scaler)
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
