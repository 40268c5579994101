"""End-to-end inference throughput: normalised batch in, fixed-size detections out."""

import baselines
import pytest
import torch
from conftest import CUDA, run

from ssdfast.models import build_model
from ssdfast.postprocess import postprocess


def make_infer(name, batch, device, post, channels_last=False, amp_dtype=None):
    torch.manual_seed(0)
    model = build_model(name, num_classes=80).to(device).eval()
    images = torch.randn(batch, 3, 300, 300, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def infer():
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            locs, confs = model(images)
        if post == "compiled":
            return postprocess(locs, confs, model.anchors, model.anchor_spec.variances)
        return baselines.postprocess_loop(locs, confs, model.anchors, model.anchor_spec.variances)

    return infer


@pytest.mark.parametrize("post", ["compiled", "older_style_loop"])
def test_inference_ssdlite_cpu(benchmark, post):
    benchmark.group = "inference ssdlite b8 [cpu]"
    run(
        benchmark,
        make_infer("ssdlite", 8, "cpu", post, channels_last=True),
        role="baseline" if post == "older_style_loop" else "candidate",
        items=8,
        rounds=3,
    )


@CUDA
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("post", ["compiled", "older_style_loop"])
def test_inference_ssd300_cuda(benchmark, batch, post):
    benchmark.group = f"inference ssd300 b{batch} fp16 channels_last [cuda]"
    run(
        benchmark,
        make_infer("ssd", batch, "cuda", post, channels_last=True, amp_dtype=torch.float16),
        role="baseline" if post == "older_style_loop" else "candidate",
        items=batch,
        rounds=3 if post == "older_style_loop" else 10,
        warmup=1 if post == "older_style_loop" else 3,
        device="cuda",
    )
