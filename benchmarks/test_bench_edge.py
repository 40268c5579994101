"""The export formats side by side on CPU: eager PyTorch, ONNX Runtime fp32/INT8, OpenVINO fp32/INT8,
ExecuTorch (XNNPACK) fp32/INT8, each timed and each with its COCO AP next to the float model's.

Each call: a normalised batch [B, 3, 300, 300] in, detections out (NMS included: inside the file, or
ssdfast.postprocess after an ExecuTorch file). SSDLite is the demo's model (tools/demo.py: its
``model/best.pt`` and ``data/``, found at $SSDFAST_DEMO or demo_output/); its AP is measured on all the
demo's validation images, INT8 calibrated on 128 of its training images, as tools/export.py --int8 does.
SSD300 has no demo-trained weights (training it on a CPU takes days): random weights, speed only.
A format whose runtime is not installed is skipped with the extra to install. Without a demo model the
file skips; a smoke run (--benchmark-disable, as `make test` does) runs only SSDLite b1 eager and ONNX
Runtime fp32, once.

    python -m pytest benchmarks/test_bench_edge.py --benchmark-only --benchmark-json=edge.json -p no:xdist
    python benchmarks/report.py edge.json --name edge-cpu-2-cores
"""

import gc
import os
from pathlib import Path

import pytest
import torch
from conftest import run

from ssdfast.deploy.formats import CALIBRATION_IMAGES, FORMATS, missing
from ssdfast.inference import PostProcessed, load_detector
from ssdfast.models import build_model

DEMO = Path(os.environ.get("SSDFAST_DEMO", Path(__file__).resolve().parent.parent / "demo_output"))
RUNTIMES = {  # name: (format, INT8); eager is the baseline of each group
    "eager": (None, False),
    "onnxruntime-fp32": ("onnx", False),
    "onnxruntime-int8": ("onnx", True),
    "openvino-fp32": ("openvino", False),
    "openvino-int8": ("openvino", True),
    "executorch-fp32": ("executorch", False),
    "executorch-int8": ("executorch", True),
}
SMOKE = ("eager", "onnxruntime-fp32")


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "model" / "best.pt").is_file():
        pytest.skip(f"no demo model at {DEMO}/model/best.pt: run `make demo` (or set SSDFAST_DEMO)")
    from ssdfast.deploy.int8 import int8_data

    return int8_data(DEMO / "data", None, CALIBRATION_IMAGES, 10_000)


@pytest.fixture(scope="module")
def models(demo):
    """{model: (PyTorch model, checkpoint metadata)}: the demo's SSDLite, a random SSD300 (80 classes)."""
    lite = load_detector(DEMO / "model" / "best.pt", "cpu")
    torch.manual_seed(0)
    meta = {"model_name": "ssd300_resnet50", "num_classes": 80, "category_names": [str(i) for i in range(80)]}
    return {"ssdlite": lite, "ssd300": (build_model("ssd300_resnet50", num_classes=80).eval(), meta)}


@pytest.fixture(scope="module")
def files(models, demo, tmp_path_factory):
    """get(model, runtime) -> (detector, its AP or None, the float model's AP or None), built on first use."""
    from ssdfast.deploy.deployed import Deployed
    from ssdfast.deploy.export import export
    from ssdfast.deploy.int8 import coco_ap

    folder, cache = tmp_path_factory.mktemp("edge"), {}

    def get(short: str, how: str):
        if (short, how) not in cache:
            model, meta = models[short]
            name, int8 = RUNTIMES[how]
            if name is None:
                detector = PostProcessed(model)  # DETECTION_POLICY, as the exports below
            else:
                absent = missing(FORMATS[name], f"the {how} benchmark", exporting=True)
                if absent:
                    pytest.skip(absent)
                path = folder / f"{short}-{how}{FORMATS[name].suffix}"
                calibration = demo.calibration if int8 else None
                export(model, meta, name, path, batch=None, with_nms=True, calibration=calibration)
                detector = Deployed(path)
            scored = short == "ssdlite"
            ap = coco_ap(detector, demo.validation, detector.policy) if scored else None
            cache[(short, how)] = detector, ap, (coco_ap(model, demo.validation, detector.policy) if scored else None)
        return cache[(short, how)]

    return get


@pytest.mark.parametrize("how", list(RUNTIMES))
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("short", ["ssdlite", "ssd300"])
def test_edge_cpu(benchmark, request, short, batch, how):
    if request.config.getoption("benchmark_disable") and ((short, batch) != ("ssdlite", 1) or how not in SMOKE):
        pytest.skip("a smoke run (--benchmark-disable) checks SSDLite b1 eager and ONNX Runtime fp32 only")
    detector, ap, ap_float = request.getfixturevalue("files")(short, how)  # after the skip: exports take minutes
    images = torch.randn(batch, 3, 300, 300, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"edge {short} b{batch} [cpu]"
    benchmark.extra_info.update(work=f"{batch} image(s) -> detections, NMS included", throughput=True)
    if ap is not None:
        benchmark.extra_info.update(ap=ap, ap_float=ap_float)
    with torch.no_grad():
        run(
            benchmark,
            lambda: detector(images),
            role="baseline" if how == "eager" else "candidate",
            items=batch,
            rounds=10 if short == "ssdlite" else 3,
            warmup=1,
        )
    gc.collect()
