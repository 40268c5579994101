"""The optimiser and its learning rate: SGD with momentum, the linear scaling rule, the step schedule.

One home for the lr policy: --lr is given for a global batch of 32 (scaled_lr), multiplied by 0.1 at
each milestone epoch, with an optional linear warmup (LrSchedule); set_lr applies it every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REFERENCE_BATCH = 32  # the global batch --lr is given for


def scaled_lr(lr: float, global_batch: int) -> float:
    """The linear scaling rule: `lr` is for a global batch of 32 images, so 256 images get 8x."""
    return lr * global_batch / REFERENCE_BATCH


def lr_at(base_lr: float, epoch: int, iteration: int, iters_per_epoch: int, milestones, warmup_iters: int) -> float:
    """Step schedule x0.1 at each milestone epoch, with linear warmup over the first warmup_iters."""
    lr = base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    step = epoch * iters_per_epoch + iteration
    if warmup_iters > 0 and step < warmup_iters:
        lr *= (step + 1) / warmup_iters
    return lr


@dataclass(frozen=True)
class LrSchedule:
    """lr_at with the run's settings bound: schedule(epoch, iteration, iters_per_epoch) -> lr."""

    base_lr: float
    milestones: tuple[int, ...] = ()
    warmup_iters: int = 0

    def __call__(self, epoch: int, iteration: int, iters_per_epoch: int) -> float:
        return lr_at(self.base_lr, epoch, iteration, iters_per_epoch, self.milestones, self.warmup_iters)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured CUDA graph reads this tensor
        else:
            group["lr"] = lr


def build_optimizer(
    model,
    lr: float,
    device,
    *,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    decay_norms_and_biases: bool = True,
    lr_as_tensor: bool = False,
) -> torch.optim.SGD:
    """SGD over model's parameters. decay_norms_and_biases=False: no weight decay on parameters with
    one dimension (BatchNorm and biases; NVIDIA's tweak). lr_as_tensor: lr is a device tensor, so lr
    changes reach a captured CUDA graph."""
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if decay_norms_and_biases or param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    # On CUDA, fused SGD: one kernel for all parameters, and it takes GradScaler's inf check on the
    # device (the unfused step reads it on the host: a sync every iteration with fp16).
    fused = device.type == "cuda" or None
    if lr_as_tensor:
        lr = torch.tensor(lr, device=device)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)
    if fused:
        zero_momentum_buffers(optimizer)
    return optimizer


def zero_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """Give every parameter without one a zero momentum buffer (SGD with dampening 0: the same steps).

    Why, for fused SGD with a GradScaler: its first step allocates the buffers with torch.empty_like and
    the kernel fills them, unless the step is skipped for an inf gradient (fp16's usual first steps):
    the kernel then returns at once (torch/optim/sgd.py _fused_sgd, torch 2.15; FusedSgdKernel.cu), the
    buffers stay uninitialised memory, and the next step reads them as momentum (tests/test_compiled_step.py
    shows it on CPU). The unfused step is not called at all then, so it starts clean. A zero buffer is
    what the first step writes in effect: with dampening 0, buf = momentum * 0 + grad = grad."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0 or group.get("dampening", 0) != 0:
            continue
        for param in group["params"]:
            if "momentum_buffer" not in optimizer.state[param]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def load_optimizer_state(optimizer: torch.optim.SGD, saved: dict) -> None:
    """Load the momentum buffers of `saved` (an optimizer.state_dict()) into `optimizer`; every setting
    stays as this run built it. torch's load_state_dict also replaces each group's settings with the
    saved ones, and a resumed run must not inherit them: not `fused` (a checkpoint of a CPU run would
    make a GPU run's GradScaler hand its inf check to the unfused step, which refuses it), not the lr
    tensor a captured CUDA graph reads (a float would be baked into the graph), not the momentum or weight
    decay given on this command line (the run says it goes on with the new values). Each buffer takes its
    parameter's memory layout: a buffer saved by an NCHW run (a CPU run) beside a channels_last parameter
    (a GPU run) fails fused SGD's check that parameters, gradients and buffers share strides.
    Raises ValueError when the parameter groups differ in number or size."""
    built = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, built):
        group.update(settings)
        for param in group["params"]:
            buffer = optimizer.state[param].get("momentum_buffer")
            if buffer is not None and buffer.stride() != param.stride():
                optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(buffer)
    if optimizer.defaults.get("fused"):
        # Saved before any step (or after skipped ones only), the state has no buffers: see zero_momentum_buffers.
        zero_momentum_buffers(optimizer)
