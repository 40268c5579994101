"""Where one training step's time goes, kernel by kernel (torch.profiler), for each autocast dtype: the
question "why is bf16 slower than fp16 in eager mode?" answered by the kernels each one runs.

    python benchmarks/profile_step.py --out profile.json          # SSD300 b128 channels_last, fp16 and bf16, CUDA
    python benchmarks/profile_step.py --smoke --out /tmp/p.json   # SSDLite b2 fp32 on the CPU: checks the script

PyTorch chooses cuDNN's BatchNorm or its own kernels per call (aten/src/ATen/native/Normalization.cpp,
_select_batch_norm_backend, which looks at the input's dtype), so the BatchNorm kernels' names are listed per dtype
beside the time of each kernel family. tools/gpu_check.py runs this as its `profile` phase.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from workloads import coco_like_ground_truth

from ssdfast.models import build_model
from ssdfast.training.optimizer import zero_momentum_buffers
from ssdfast.training.step import TrainStep

# Kernel families, tried in this order on each kernel's name (cuDNN's BatchNorm kernels are "bn_fw_...",
# "bn_bw_..."; PyTorch's own are "batch_norm_..."; convolutions run as cuDNN/CUTLASS GEMMs).
FAMILIES = [
    ("batchnorm", r"batch_?norm|(^|[^a-z])bn_|welford"),
    ("convolution", r"conv|gemm|xmma|cutlass|wgrad|dgrad|fprop|implicit|sm\d\d_"),
    ("elementwise", r"elementwise|vectorized|unrolled|relu|threshold|copy|fill|add|mul"),
    ("reduction", r"reduce|sum|norm"),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def family(kernel: str) -> str:
    return next((name for name, pattern in FAMILIES if re.search(pattern, kernel, flags=re.I)), "other")


def kernel_time_us(event, device: str) -> float:
    """An averaged profiler event's own time on `device` in microseconds (torch renamed cuda_* to device_*)."""
    if device == "cpu":
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def make_step(name: str, batch: int, device: str, amp_dtype):
    """The training step the benchmarks time (fused SGD on CUDA, GradScaler with fp16), and its inputs."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device == "cuda"
    model = build_model(name, num_classes=80, backbone_weights="none").to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=device == "cuda" or None)
    if device == "cuda":
        zero_momentum_buffers(optimizer)
    scaler = torch.amp.GradScaler(device) if amp_dtype == torch.float16 else None
    step = TrainStep(model, optimizer, amp_dtype=amp_dtype, scaler=scaler)
    images = torch.randn(batch, 3, 300, 300, device=device).contiguous(memory_format=torch.channels_last)
    boxes, labels = coco_like_ground_truth(batch)
    return step, (images, boxes.to(device), labels.to(device))


def profile(name: str, batch: int, device: str, dtype: str, steps: int, warmup: int) -> dict:
    """Kernel times of `steps` training steps after `warmup` -> per family ms per step, the top kernels and
    the BatchNorm kernels by name."""
    step, inputs = make_step(name, batch, device, DTYPES[dtype])
    for _ in range(warmup):
        step(*inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    activity = torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU
    start = time.perf_counter()
    with torch.profiler.profile(activities=[activity]) as prof:
        for _ in range(steps):
            step(*inputs)
        sync()
    wall = time.perf_counter() - start
    kernels = [
        (e.key, kernel_time_us(e, device) / 1e3 / steps, e.count // steps)
        for e in prof.key_averages()
        if (device == "cpu" or e.device_type == torch.autograd.DeviceType.CUDA) and kernel_time_us(e, device) > 0
    ]
    total = sum(ms for _, ms, _ in kernels)
    families: dict[str, float] = {}
    for kernel, ms, _ in kernels:
        families[family(kernel)] = families.get(family(kernel), 0.0) + ms
    kernels.sort(key=lambda k: -k[1])
    return {
        "model": name,
        "batch": batch,
        "dtype": dtype,
        "ms_per_step_profiled": round(1e3 * wall / steps, 2),  # the profiler's overhead included
        "kernel_ms_per_step": round(total, 2),
        "families_ms": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "families_pct": {k: round(100 * v / total, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "batchnorm_kernels": [
            {"kernel": k[:160], "ms": round(ms, 3), "calls": calls}
            for k, ms, calls in kernels
            if family(k) == "batchnorm"
        ][:12],
        "top_kernels": [{"kernel": k[:160], "ms": round(ms, 3), "calls": calls} for k, ms, calls in kernels[:15]],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write (rewritten after each dtype)")
    p.add_argument("--model", choices=["ssd", "ssdlite"], default="ssd", help="model to profile")
    p.add_argument("--batch", type=int, default=128, help="images per step")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"], help="autocast dtypes")
    p.add_argument("--steps", type=int, default=5, help="profiled steps per dtype")
    p.add_argument("--smoke", action="store_true", help="SSDLite, batch 2, fp32, 1 step on the CPU (checks the script)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.dtypes, args.steps = "ssdlite", 2, ["fp32"], 1
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("profile_step: no CUDA GPU (use --smoke on a CPU)", file=sys.stderr)
        return 1
    out = Path(args.out)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    for dtype in args.dtypes:
        results[dtype] = profile(args.model, args.batch, device, dtype, args.steps, warmup=0 if args.smoke else 3)
        out.write_text(json.dumps(results, indent=1))
        summary = results[dtype]
        print(f"{dtype}: {summary['kernel_ms_per_step']} ms of kernels per step; {summary['families_pct']}")
        for kernel in summary["batchnorm_kernels"][:4]:
            print(f"  {kernel['ms']:8.3f} ms  {kernel['kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
