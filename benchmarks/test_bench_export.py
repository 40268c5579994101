"""Deployment inference: PyTorch eager vs torch.compile vs the exported ONNX file in ONNX Runtime.

Each call: a normalised batch [B, 3, 300, 300] in, fixed-size detections (NMS included) out, for
both models at 80 classes (random init). ONNX Runtime runs the file tools/export.py writes (dynamic
batch, NonMaxSuppression in the graph) with the CPU execution provider (CUDA's on a GPU machine).
With random weights few scores pass the 0.05 threshold: these numbers are the network plus the
fixed cost of post-processing, as on mostly empty images.
"""

import gc
import os

import pytest
import torch
from conftest import CUDA, run

from ssdfast.defaults import DETECTION_POLICY
from ssdfast.deploy.export import export
from ssdfast.models import build_model
from ssdfast.postprocess import postprocess

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MODELS = {"ssdlite": "ssdlite300_mobilenetv2", "ssd300": "ssd300_resnet50"}
# Compile in this process: a pool of compile workers would compete with the timed runs for 2 cores.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


SMOKE = ("ssdlite", 1)  # what a smoke run (--benchmark-disable, as `make test` does) runs: each way, once


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(model) -> (PyTorch model, path of its .onnx), exported on first use."""
    out = {}

    def get(short: str):
        if short not in out:
            name = MODELS[short]
            torch.manual_seed(0)
            model = build_model(name, num_classes=80).eval()
            path = tmp_path_factory.mktemp("export") / f"{short}.onnx"
            meta = {"model_name": name, "num_classes": 80, "category_names": [str(i) for i in range(80)]}
            export(model, meta, "onnx", path, batch=None, with_nms=True, policy=DETECTION_POLICY)
            out[short] = model, path
        return out[short]

    return get


def make_call(model, path, how: str, device: str):
    if how == "onnxruntime":
        from ssdfast.deploy.deployed import Deployed

        return Deployed(path, device)

    def eager(images):
        return postprocess(*model(images), model.anchors, model.anchor_spec.variances)

    fn = torch.compile(eager, dynamic=False) if how == "torch_compile" else eager
    return torch.no_grad()(fn)


def bench(benchmark, exported, short, batch, how, device):
    if benchmark.disabled and (short, batch) != SMOKE:
        pytest.skip("a smoke run (--benchmark-disable) checks SSDLite b1 only")
    model, path = exported(short)  # after the skip: an SSD300 export takes a minute on 2 cores
    model = model.to(device)
    images = torch.randn(batch, 3, 300, 300, generator=torch.Generator().manual_seed(1)).to(device)
    call = make_call(model, path, how, device)
    benchmark.group = f"deploy {short} b{batch} [{device}]"
    benchmark.extra_info.update(
        work=f"{batch} image(s) -> detections, NMS included", throughput=True
    )  # images/s at b1 too
    # The first (warm-up) round of torch.compile compiles; it is not timed.
    run(
        benchmark,
        lambda: call(images),  # noqa: F821  (ruff: `call` is deleted below, after the run)
        role="baseline" if how == "eager" else "candidate",
        items=batch,
        rounds=10 if short == "ssdlite" else 5,
        warmup=1,
        device=device,
    )
    del call  # an idle ONNX Runtime session's threads must not share the cores with the next benchmark
    gc.collect()


@pytest.mark.parametrize("how", ["eager", "torch_compile", "onnxruntime"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("short", list(MODELS))
def test_deploy_cpu(benchmark, exported, short, batch, how):
    bench(benchmark, exported, short, batch, how, "cpu")


@CUDA
@pytest.mark.parametrize("how", ["eager", "torch_compile", "onnxruntime"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("short", list(MODELS))
def test_deploy_cuda(benchmark, exported, short, batch, how):
    if how == "onnxruntime" and "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider (onnxruntime-gpu)")
    bench(benchmark, exported, short, batch, how, "cuda")
