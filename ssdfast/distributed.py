"""One process or many: read torchrun's environment and start the process group."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device_arg: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set, world > 1) this starts
    the process group: NCCL on GPUs, gloo on CPU. device_arg: 'cpu', 'cuda', 'cuda:N' or None (auto)."""
    cuda = torch.cuda.is_available() and device_arg != "cpu"
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    return 0, 1, torch.device(device_arg or ("cuda" if cuda else "cpu"))
