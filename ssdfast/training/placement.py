"""Where and how this process trains: its rank among the processes, its device, and the precision and
memory format it computes in (the decisions themselves live in ssdfast/machinery/runtime.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdfast.machinery.preemption import StopAgreement, process_group_timeout
from ssdfast.machinery.runtime import autocast_dtype, configure_cudnn, setup_distributed, use_channels_last
from ssdfast.training.config import TrainConfig


@dataclass(frozen=True)
class Placement:
    """rank/world/device (the process group started under torchrun), the ranks' stop agreement, and
    cuDNN autotuning, channels_last and the autocast dtype as this device runs them."""

    rank: int
    world: int
    device: torch.device
    agreement: StopAgreement
    cudnn_benchmark: bool
    channels_last: bool
    amp_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and pictures."""
        return self.rank == 0

    @classmethod
    def set_up(cls, config: TrainConfig) -> Placement:
        """Start the process group (under torchrun) and settle the device's settings; CUDA graphs only
        where they run."""
        speed, timeout = config.speed, process_group_timeout(config.run.dist_timeout)
        rank, world, device = setup_distributed(speed.device, timeout)
        agreement = StopAgreement(timeout)  # every rank, at the same point (new_group is a collective)
        if speed.cuda_graphs and device.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device (CUDA graphs do not exist on CPU)")
        if speed.cuda_graphs and world > 1:
            # Capturing DDP takes PyTorch's own recipe (DDP built on a side stream, 11+ eager warm-up steps,
            # NCCL async error handling off), which CudaGraphTrainStep does not follow: refused (docs/training.md).
            raise ValueError(
                "--cuda-graphs is single-process for now (capturing DDP is untested): drop "
                "--cuda-graphs under torchrun, or train on one GPU"
            )
        return cls(
            rank=rank,
            world=world,
            device=device,
            agreement=agreement,
            cudnn_benchmark=configure_cudnn(device, not speed.no_cudnn_benchmark),
            channels_last=use_channels_last(device, speed.channels_last),
            amp_dtype=autocast_dtype(device, speed.amp, speed.amp_dtype, speed.cuda_graphs),
        )
