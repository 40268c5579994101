"""Post-processing of 32 SSD300 outputs (80 classes): batched compiled ops vs the older-implementation-style loop."""

import baselines
import pytest
from conftest import DEVICES, run
from workloads import ssd300_outputs

from ssdfast.anchors import SSD300_RESNET50
from ssdfast.postprocess import postprocess

VARIANCES = SSD300_RESNET50.variances  # ssd300_outputs' anchors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["batched_compiled", "older_style_loop"])
def test_postprocess(benchmark, device, impl):
    benchmark.group = f"postprocess 32xSSD300 [{device}]"
    batch = 2 if benchmark.disabled else 32  # a smoke run (make test) only checks that both run: 2 images
    locs, confs, anchors = (t.to(device) for t in ssd300_outputs(batch))
    if impl == "batched_compiled":
        out = run(
            benchmark,
            lambda: postprocess(locs, confs, anchors, VARIANCES),
            role="candidate",
            items=batch,
            device=device,
        )
        assert out.boxes.shape == (batch, 200, 4)
    else:
        # One round on CUDA: the loop syncs with the host for every kept box (minutes per call there).
        run(
            benchmark,
            lambda: baselines.postprocess_loop(locs, confs, anchors, VARIANCES),
            role="baseline",
            items=batch,
            rounds=1 if device == "cuda" else 2,
            warmup=0,
            device=device,
        )
