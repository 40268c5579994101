"""How a process runs: torchrun's environment and the process group, the device, and cuDNN settings.

One home for these decisions, shared by tools/train.py, tools/eval.py and tools/detect.py.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device_arg: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set, world > 1) this starts
    the process group: NCCL on GPUs, gloo on CPU. device_arg: 'cpu', 'cuda', 'cuda:N' or None (auto).
    A plain 'cuda' means the current CUDA device (torch.cuda.current_device()), made explicit here so
    that every consumer (DALI's device_id, the model, the data) agrees on one index."""
    cuda = torch.cuda.is_available() and device_arg != "cpu"
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    device = torch.device(device_arg or ("cuda" if cuda else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return 0, 1, device


def configure_cudnn(device: torch.device, benchmark: bool = True) -> bool:
    """Let cuDNN time its convolution algorithms once per input shape and keep the fastest.

    SSD's input size is fixed (300x300) and drop_last keeps the batch fixed, so the one-off cost
    (a few seconds in the first iterations) buys every later step. Returns whether it is on."""
    on = device.type == "cuda" and benchmark
    torch.backends.cudnn.benchmark = on
    return on
