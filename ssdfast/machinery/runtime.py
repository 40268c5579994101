"""How a process runs: torchrun's environment and the process group, the device, cuDNN settings,
the autocast dtype and the memory format; the DDP wrapper and the loop's one deliberate host sync.

One home for these decisions, shared by tools/train.py, tools/eval.py and tools/detect.py.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def setup_distributed(device_arg: str | None = None, timeout: timedelta | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set, world > 1) this starts
    the process group: NCCL on GPUs, gloo on CPU. device_arg: 'cpu', 'cuda', 'cuda:N' or None (auto).
    timeout: how long any collective may wait for a peer before it fails (None: torch's default)."""
    requested = check_device(device_arg)
    cuda = requested.type == "cuda" if requested is not None else torch.cuda.is_available()
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda and local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} has no GPU of its own: this machine has {machine_devices()}")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout, **attempt_store(timeout))
        return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    return 0, 1, pick_device(device_arg)


def attempt_store(timeout: timedelta | None) -> dict:
    """Under torchrun restarts (--max-restarts) on one node, a store of this attempt's own: the restarted
    workers share torchrun's store with the dead ones, whose keys (a gloo listening address, an NCCL id)
    are still there, and a new rank could connect to a dead one (pytorch/pytorch#135712, #167288). A
    prefix per restart keeps each attempt's keys apart. Only on one node: each node's agent counts its
    own restarts, so across nodes the count can differ (README: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    there). {} otherwise (init_process_group's own env://)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE"):
        return {}
    kwargs = {"timeout": timeout} if timeout is not None else {}
    store, rank, world = next(dist.rendezvous("env://", **kwargs))
    return {"store": dist.PrefixStore(f"ssdfast/attempt_{attempt}", store), "rank": rank, "world_size": world}


DEVICE_TYPES = ("cpu", "cuda")  # what ssdfast's kernels and their PyTorch twins are built and tested for


def pick_device(device_arg: str | torch.device | None = None, name: str = "--device") -> torch.device:
    """The device of a one-process run: `device_arg` (checked: check_device), or CUDA when there is a GPU;
    a plain "cuda" is the current CUDA device, made explicit so every consumer (model, data, DALI) agrees
    on one index."""
    device = check_device(device_arg, name)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_device(device_arg: str | torch.device | None, name: str = "--device") -> torch.device | None:
    """The device `device_arg` names ("cpu", "cuda", "cuda:N"), or None for "pick one". Every tool and
    ssdfast.load resolve their device here, so a device this machine lacks is one ValueError, before any
    work, naming `name` (the flag or argument), what was asked and what this machine has; PyTorch's
    own error comes later, deep in a traceback ("Found no NVIDIA driver on your system")."""
    if device_arg is None:
        return None
    asked = str(device_arg)
    try:
        device = torch.device(asked)
    except (RuntimeError, ValueError):  # "tpu", "cuda:x", "cuda:-1"
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{name} {asked}: ssdfast runs on cpu, cuda or cuda:N; this machine has {machine_devices()}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count() > 0:
        raise ValueError(f"{name} {asked}: no such GPU; this machine has {machine_devices()}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {asked}: this machine has no CUDA GPU ({_why_no_cuda()}); it has {machine_devices()}")
    return device


def machine_devices() -> str:
    """What this machine offers ssdfast, in words: "cpu" or "cpu, cuda:0 (NVIDIA H100 80GB HBM3), ..."."""
    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        try:
            gpus.append(f"cuda:{index} ({torch.cuda.get_device_name(index)})")
        except RuntimeError:  # a GPU that is counted but cannot start: named without its model
            gpus.append(f"cuda:{index}")
    return ", ".join(["cpu", *gpus]) + ("" if gpus else " only")


def _why_no_cuda() -> str:
    if torch.version.cuda is None and torch.version.hip is None:
        return "this PyTorch is built without CUDA"
    return "no NVIDIA driver or no GPU visible; CUDA_VISIBLE_DEVICES may hide them"


def configure_cudnn(device: torch.device, benchmark: bool = True) -> bool:
    """Let cuDNN time its convolution algorithms once per input shape and keep the fastest.

    SSD's input size is fixed (300x300) and drop_last keeps the batch fixed, so the one-off cost
    (a few seconds in the first iterations) buys every later step. Returns whether it is on."""
    on = device.type == "cuda" and benchmark
    torch.backends.cudnn.benchmark = on
    return on


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(
    device: torch.device, enabled: bool, requested: str | None = None, cuda_graphs: bool = False
) -> torch.dtype | None:
    """The autocast dtype of every tool: None when AMP is off; else `requested` ('fp16'/'bf16'), or by
    default fp16 on CUDA (the fastest there: docs/speed.md), bf16 with CUDA graphs (no GradScaler in the
    graph; fp16 there captures it with the step, and which of the two ran on a GPU: docs/training.md) and
    bf16 on CPU (CPU autocast's type)."""
    if not enabled:
        return None
    name = requested or ("bf16" if cuda_graphs or device.type != "cuda" else "fp16")
    return AMP_DTYPES[name]


def use_channels_last(device: torch.device, requested: bool | None = None) -> bool:
    """channels_last memory format: on by default on CUDA (tensor cores want NHWC), off on CPU."""
    return device.type == "cuda" if requested is None else requested


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


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
