"""Training-step throughput on synthetic tensors (data loading excluded): memory formats, AMP,
CUDA graphs, the compiled step (--compile), and loss targets from the compiled op vs the pure-PyTorch twin; then the
same step fed by the real data path, to show whether loading keeps up."""

import functools

import pytest
import torch
from conftest import CUDA, run
from torch.utils.flop_counter import FlopCounterMode
from workloads import coco_like_ground_truth, ssd300_fp16_step, time_fed_epoch

from ssdfast import ops, reference
from ssdfast.data import build_loader
from ssdfast.data.synthetic import write_synthetic_coco
from ssdfast.models import build_model
from ssdfast.training.optimizer import zero_momentum_buffers
from ssdfast.training.step import CompiledTrainStep, CudaGraphTrainStep, TrainStep

STEPS = 3  # optimisation steps per timed call


@functools.lru_cache
def train_flop_per_image(name: str) -> float:
    """FLOPs of one training image (forward + backward of the model), counted by PyTorch on CPU.
    Two images: BatchNorm in training mode refuses one image on the 1x1 maps."""
    model = build_model(name, num_classes=80, backbone_weights="none")
    with FlopCounterMode(display=False) as counter:
        locs, confs = model(torch.randn(2, 3, 300, 300))
        (locs.sum() + confs.sum()).backward()
    return float(counter.get_total_flops()) / 2


def make_step(
    name,
    batch,
    device,
    *,
    channels_last=False,
    amp_dtype=None,
    cuda_graphs=False,
    targets="compiled",
    compile_mode=None,
):
    """compile_mode: the step of tools/train.py --compile --compile-mode COMPILE_MODE (inductor)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device == "cuda"  # what the tools do on CUDA (ssdfast.machinery.runtime)
    model = build_model(name, num_classes=80).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = torch.tensor(1e-3, device=device) if cuda_graphs else 1e-3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=device == "cuda" or None)
    if device == "cuda":
        zero_momentum_buffers(optimizer)  # as build_optimizer does for fused SGD
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    targets_fn = reference.match_encode if targets == "reference" else ops.match_encode
    common = dict(amp_dtype=amp_dtype, scaler=scaler, targets_fn=targets_fn)
    if compile_mode:
        step = CompiledTrainStep(model, optimizer, mode=compile_mode, **common)
    else:
        step = (CudaGraphTrainStep if cuda_graphs else TrainStep)(model, optimizer, **common)
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
    "amp_bf16_channels_last_cuda_graphs_reference_targets": {
        "channels_last": True,
        "amp_dtype": torch.bfloat16,
        "cuda_graphs": True,
        "targets": "reference",
    },
    # --compile: torch.compile fuses BatchNorm/ReLU/add (memory-bound in eager mode); compiling takes minutes.
    "amp_fp16_channels_last_compiled": {"channels_last": True, "amp_dtype": torch.float16, "compile_mode": "default"},
    "amp_bf16_channels_last_compiled": {"channels_last": True, "amp_dtype": torch.bfloat16, "compile_mode": "default"},
    # --compile-mode reduce-overhead: the compiled forward and backward replayed from CUDA graphs.
    "amp_bf16_channels_last_compiled_reduce_overhead": {
        "channels_last": True,
        "amp_dtype": torch.bfloat16,
        "compile_mode": "reduce-overhead",
    },
}
GPU_MODELS = [("ssd", 64), ("ssd", 128), ("ssdlite", 128)]


@CUDA
@pytest.mark.parametrize("name,batch", GPU_MODELS, ids=[f"{n}-b{b}" for n, b in GPU_MODELS])
@pytest.mark.parametrize("config", list(GPU_CONFIGS))
def test_train_step_cuda(benchmark, config, name, batch):
    benchmark.group = f"train step {name} b{batch} [cuda]"
    steps = make_step(name, batch, "cuda", **GPU_CONFIGS[config])
    benchmark.extra_info["flop_per_item"] = train_flop_per_image(name)
    run(
        benchmark,
        steps,
        role="baseline" if config == "fp32_nchw" else "candidate",
        items=batch * STEPS,
        rounds=5,
        warmup=2,
        device="cuda",
    )


@pytest.fixture(scope="module")
def loader_coco(tmp_path_factory):
    """A synthetic COCO-layout set with 1024 training images: 8 batches of 128 per epoch."""
    return write_synthetic_coco(tmp_path_factory.mktemp("loader_coco"), num_train=1024, num_val=8, seed=0)


@CUDA
@pytest.mark.parametrize("source", ["synthetic_tensors", "pytorch_loader_16_workers"])
def test_train_from_loader_cuda(benchmark, loader_coco, source):
    """SSD300 b128 fp16 channels_last: the step alone vs the step fed by the PyTorch data path
    (JPEG decode + SSD augmentation on CPU workers, pinned copies). Equal rates: data keeps up."""
    batch = 128
    benchmark.group = f"train ssd300 b{batch} fp16 channels_last: data path [cuda]"
    train_step = ssd300_fp16_step()
    loader = build_loader(
        loader_coco, "train", train=True, batch_size=batch, num_workers=16, device="cuda", max_boxes=128
    )
    benchmark.extra_info["flop_per_item"] = train_flop_per_image("ssd")
    time_fed_epoch(benchmark, train_step, loader, batch, step_alone=source == "synthetic_tensors")
