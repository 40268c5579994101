"""Training-step throughput on synthetic tensors (data loading excluded): memory formats, AMP,
CUDA graphs, and loss targets from the compiled op vs the pure-PyTorch twin."""
import pytest
import torch

from ssdfast import ops, reference
from ssdfast.engine import CudaGraphTrainStep, TrainStep
from ssdfast.models import build_model

from conftest import CUDA, run
from workloads import coco_like_ground_truth

STEPS = 3  # optimisation steps per timed call


def make_step(name, batch, device, *, channels_last=False, amp_dtype=None, cuda_graphs=False, targets="compiled"):
    torch.manual_seed(0)
    model = build_model(name, num_classes=80).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = torch.tensor(1e-3, device=device) if cuda_graphs else 1e-3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=cuda_graphs or None)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    targets_fn = reference.match_encode if targets == "reference" else ops.match_encode
    step = (CudaGraphTrainStep if cuda_graphs else TrainStep)(model, optimizer, amp_dtype=amp_dtype, scaler=scaler,
                                                              targets_fn=targets_fn)
    images = torch.randn(batch, 3, 300, 300, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    boxes, labels = coco_like_ground_truth(batch)
    boxes, labels = boxes.to(device), labels.to(device)

    def steps():
        for _ in range(STEPS):
            loss = step(images, boxes, labels)
        return loss

    return steps


CPU_CONFIGS = {
    "fp32_nchw": {},
    "fp32_channels_last": {"channels_last": True},
    "fp32_channels_last_reference_targets": {"channels_last": True, "targets": "reference"},
}


@pytest.mark.parametrize("config", list(CPU_CONFIGS))
def test_train_step_ssdlite_cpu(benchmark, config):
    benchmark.group = "train step ssdlite b8 [cpu]"
    steps = make_step("ssdlite", 8, "cpu", **CPU_CONFIGS[config])
    run(benchmark, steps, role="baseline" if config == "fp32_nchw" else "candidate", items=8 * STEPS, rounds=5)


GPU_CONFIGS = {
    "fp32_nchw": {},
    "fp32_channels_last": {"channels_last": True},
    "amp_fp16_channels_last": {"channels_last": True, "amp_dtype": torch.float16},
    "amp_bf16_channels_last": {"channels_last": True, "amp_dtype": torch.bfloat16},
    "amp_bf16_channels_last_cuda_graphs": {"channels_last": True, "amp_dtype": torch.bfloat16, "cuda_graphs": True},
    "amp_bf16_channels_last_cuda_graphs_reference_targets": {"channels_last": True, "amp_dtype": torch.bfloat16,
                                                             "cuda_graphs": True, "targets": "reference"},
}


@CUDA
@pytest.mark.parametrize("batch", [64, 128])
@pytest.mark.parametrize("config", list(GPU_CONFIGS))
def test_train_step_ssd300_cuda(benchmark, config, batch):
    benchmark.group = f"train step ssd300 b{batch} [cuda]"
    steps = make_step("ssd", batch, "cuda", **GPU_CONFIGS[config])
    run(benchmark, steps, role="baseline" if config == "fp32_nchw" else "candidate", items=batch * STEPS, rounds=5,
        warmup=2, device="cuda")
