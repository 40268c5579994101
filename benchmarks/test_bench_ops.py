"""Op benchmarks on SSD-shaped work: compiled kernels vs their pure-PyTorch twins vs torchvision."""
import pytest
import torch
import torchvision

from ssdfast import ops, reference
from ssdfast.anchors import SSD300_RESNET50, default_boxes

from conftest import DEVICES, run
from workloads import coco_like_ground_truth, nms_candidates


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_match_encode(benchmark, device, impl):
    """Matching + encoding targets for 32 images (COCO-like counts, G = 50) against 8732 anchors."""
    benchmark.group = f"match_encode 32x8732 [{device}]"
    boxes, labels = coco_like_ground_truth()
    boxes, labels, anchors = boxes.to(device), labels.to(device), default_boxes(SSD300_RESNET50).to(device)
    fn = ops.match_encode if impl == "compiled" else reference.match_encode
    out = run(benchmark, lambda: fn(boxes, labels, anchors), role="candidate" if impl == "compiled" else "baseline",
              items=32, device=device)
    assert out[1].shape == (32, 8732)


NMS_IMPLS = ["compiled", "compiled_no_early_stop", "torchvision_per_image", "reference"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", NMS_IMPLS)
def test_batched_nms(benchmark, device, impl):
    """Class-aware NMS for 32 images x 80 classes x 200 candidates at IoU 0.45, keeping the best 200."""
    benchmark.group = f"batched_nms 32x80x200 [{device}]"
    boxes, scores, labels = (t.to(device) for t in nms_candidates())
    if impl == "compiled":
        def fn():
            return ops.batched_nms_padded(boxes, scores, labels, 0.45, 0.05, 200)
    elif impl == "compiled_no_early_stop":  # keeps everything NMS keeps: the cost of the full greedy pass
        def fn():
            return ops.batched_nms_padded(boxes, scores, labels, 0.45, 0.05, boxes.shape[1])
    elif impl == "torchvision_per_image":
        def fn():
            out = []
            for b in range(len(boxes)):
                valid = scores[b] > 0.05
                idx = torch.nonzero(valid).flatten()
                out.append(idx[torchvision.ops.batched_nms(boxes[b][valid], scores[b][valid], labels[b][valid],
                                                           0.45)][:200])
            return out
    else:
        if device == "cuda":
            pytest.skip("the reference loop syncs every kept box: not a meaningful CUDA baseline")

        def fn():
            return reference.batched_nms_padded(boxes, scores, labels, 0.45, 0.05, 200)
    role = "baseline" if impl == "torchvision_per_image" else "candidate"
    run(benchmark, fn, role=role, items=32, rounds=3 if impl == "reference" else 5, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["compiled", "torchvision", "reference"])
def test_box_iou(benchmark, device, impl):
    """IoU of 1000 boxes with the 8732 SSD300 anchors."""
    benchmark.group = f"box_iou 1000x8732 [{device}]"
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.3 * torch.rand(1000, 2, generator=g)], 1).to(device)
    anchors = default_boxes(SSD300_RESNET50).to(device)
    fn = {"compiled": ops.box_iou, "torchvision": torchvision.ops.box_iou, "reference": reference.box_iou}[impl]
    run(benchmark, lambda: fn(boxes, anchors), role="baseline" if impl == "torchvision" else "candidate",
        device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_box_decode(benchmark, device, impl):
    """Decoding 32 x 8732 SSD300 offsets."""
    benchmark.group = f"box_decode 32x8732 [{device}]"
    offsets = torch.randn(32, 8732, 4, generator=torch.Generator().manual_seed(0)).to(device)
    anchors = default_boxes(SSD300_RESNET50).to(device)
    fn = ops.box_decode if impl == "compiled" else reference.box_decode
    run(benchmark, lambda: fn(offsets, anchors), role="candidate" if impl == "compiled" else "baseline", items=32,
        device=device)
