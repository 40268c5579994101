"""What learns: the model (fresh, or fine-tuned from --weights), SGD with its lr schedule, the
GradScaler of fp16, the DDP wrapper under torchrun, and the step that trains them (step.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssdfast.models import build_model
from ssdfast.models.pretrained import resolve_backbone, weights_file
from ssdfast.models.registry import MODELS
from ssdfast.training.config import TrainConfig
from ssdfast.training.finetune import load_source, transfer_weights
from ssdfast.training.optimizer import LrSchedule, build_optimizer, scaled_lr
from ssdfast.training.placement import Placement
from ssdfast.training.step import CompiledTrainStep, CudaGraphTrainStep, TrainStep


@dataclass(frozen=True)
class Learner:
    """model (what checkpoints save), ddp_model (what the step and the evaluation run: the model itself
    in one process), optimizer, scaler (None unless fp16), base_lr (--lr scaled to the global batch),
    lr_schedule and step. The step compiles or captures at its first call, so a resume may still load
    weights and optimizer state into these objects after build()."""

    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    base_lr: float
    lr_schedule: LrSchedule
    step: TrainStep

    @classmethod
    def build(cls, config: TrainConfig, placement: Placement, category_names: list[str]) -> Learner:
        schedule, speed, device = config.schedule, config.speed, placement.device
        model = fresh_model(config, len(category_names), category_names, placement.is_main).to(device)
        if placement.channels_last:
            model = model.to(memory_format=torch.channels_last)
        base_lr = scaled_lr(schedule.lr, schedule.batch_size * placement.world)
        optimizer = build_optimizer(
            model,
            base_lr,
            device,
            momentum=schedule.momentum,
            nesterov=not schedule.no_nesterov,
            weight_decay=schedule.weight_decay,
            decay_norms_and_biases=not schedule.no_bn_weight_decay,
            lr_as_tensor=speed.cuda_graphs,
        )
        scaler = torch.amp.GradScaler(device.type) if placement.amp_dtype == torch.float16 else None
        ddp_model = model
        if placement.world > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        common = dict(amp_dtype=placement.amp_dtype, scaler=scaler)
        if speed.compile:
            step = CompiledTrainStep(
                ddp_model, optimizer, **common, mode=speed.compile_mode, backend=speed.compile_backend
            )
        else:
            step = (CudaGraphTrainStep if speed.cuda_graphs else TrainStep)(ddp_model, optimizer, **common)
        return cls(
            model=model,
            ddp_model=ddp_model,
            optimizer=optimizer,
            scaler=scaler,
            base_lr=base_lr,
            lr_schedule=LrSchedule(base_lr, schedule.multistep, schedule.warmup),
            step=step,
        )


def fetch_starting_point(config: TrainConfig) -> None:
    """Find the --weights file, or the --backbone-weights one (downloaded once and checked, when named: see
    ssdfast/models/pretrained.py), before the data loads: a missing file costs a second, not the data's
    loading time. fresh_model() finds it again from the cache (its sha256 is checked at every use)."""
    if config.model.weights:
        weights_file(config.model.weights)
    else:
        resolve_backbone(config.model.backbone_weights, MODELS[config.model.model])


def fresh_model(config: TrainConfig, num_classes: int, category_names: list[str], say: bool) -> nn.Module:
    """The model before training: from --backbone-weights, or fine-tuned from --weights (a detector
    trained on other categories: see ssdfast/training/finetune.py; it brings its own backbone).
    say: print what the fine-tuning kept (rank 0)."""
    name, weights = config.model.model, config.model.weights
    model = build_model(
        name, num_classes=num_classes, backbone_weights="none" if weights else config.model.backbone_weights
    )
    if weights:
        state, meta = load_source(weights)
        if meta["model_name"] != name:
            raise ValueError(
                f"--weights {weights} holds {meta['model_name']}, not {name}: pass --model {meta['model_name']}"
            )
        report = transfer_weights(model, state, meta["category_names"], list(category_names))
        if say:
            print(f"{weights}: {report}")
    return model
