"""Op benchmarks on SSD-shaped work: compiled kernels vs their pure-PyTorch twins vs torchvision."""

import pytest
import torch
import torchvision
from conftest import DEVICES, run
from workloads import coco_like_ground_truth, nms_candidates

from ssdfast import ops, reference
from ssdfast.anchors import SSD300_RESNET50, default_boxes


def torchvision_match_encode(boxes, labels, anchors, iou_threshold=0.5, center_variance=0.1, size_variance=0.2):
    """The older implementation's way (its Encoder.encode), the baseline: per image, torchvision's
    box_iou against the valid boxes, best ground truth per anchor and best anchor per ground truth by
    max, the claims as one indexed assignment (a later ground truth wins), then SSD encoding of every anchor."""
    anchor_wh = anchors[:, 2:] - anchors[:, :2]
    anchor_cxcy = (anchors[:, :2] + anchors[:, 2:]) / 2
    all_offsets, all_labels = [], []
    for b in range(len(boxes)):
        valid = labels[b] > 0
        gt, gt_labels = boxes[b][valid], labels[b][valid]
        if len(gt) == 0:
            all_offsets.append(torch.zeros_like(anchors))
            all_labels.append(torch.zeros(len(anchors), dtype=torch.long, device=anchors.device))
            continue
        iou = torchvision.ops.box_iou(gt, anchors)  # [g, A]
        best_iou, best_gt = iou.max(dim=0)
        best_anchor = iou.max(dim=1).indices
        best_iou.index_fill_(0, best_anchor, 2.0)
        best_gt[best_anchor] = torch.arange(len(best_anchor), device=anchors.device)
        positive = best_iou > iou_threshold
        matched = gt[best_gt]
        cxcy = ((matched[:, :2] + matched[:, 2:]) / 2 - anchor_cxcy) / (center_variance * anchor_wh)
        wh = torch.log((matched[:, 2:] - matched[:, :2]) / anchor_wh) / size_variance
        all_offsets.append(torch.cat([cxcy, wh], 1) * positive[:, None])
        all_labels.append(torch.where(positive, gt_labels[best_gt], 0))
    return torch.stack(all_offsets), torch.stack(all_labels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_boxes", [50, 128])
@pytest.mark.parametrize("impl", ["compiled", "reference", "torchvision_per_image"])
def test_match_encode(benchmark, device, max_boxes, impl):
    """Matching + encoding targets for 32 images (COCO-like counts, mean ~7, padded to G = 50 or to
    the training default G = 128) against 8732 anchors."""
    benchmark.group = f"match_encode 32x8732 G={max_boxes} [{device}]"
    boxes, labels = coco_like_ground_truth(max_boxes=max_boxes)
    valid = int((labels > 0).sum())
    benchmark.extra_info["work"] = (
        f"{valid * 8732 / 1e6:.2f}M IoUs ({valid} valid boxes x 8732 anchors; "
        f"{32 * max_boxes * 8732 / 1e6:.1f}M padded)"
    )
    boxes, labels, anchors = boxes.to(device), labels.to(device), default_boxes(SSD300_RESNET50).to(device)
    fn = {
        "compiled": ops.match_encode,
        "reference": reference.match_encode,
        "torchvision_per_image": torchvision_match_encode,
    }[impl]
    baseline = impl == "torchvision_per_image"
    out = run(
        benchmark,
        lambda: fn(boxes, labels, anchors),
        role="baseline" if baseline else "candidate",
        items=32,
        rounds=5 if baseline else 15,
        warmup=1 if baseline else 3,
        device=device,
    )  # a few ms: more rounds
    assert out[1].shape == (32, 8732)


NMS_IMPLS = ["compiled", "compiled_no_early_stop", "torchvision_per_image", "reference"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", NMS_IMPLS)
def test_batched_nms(benchmark, device, impl):
    """Class-aware NMS for 32 images x 80 classes x 200 candidates at IoU 0.45, keeping the best 200."""
    benchmark.group = f"batched_nms 32x80x200 [{device}]"
    boxes, scores, labels = (t.to(device) for t in nms_candidates())
    above = int((scores > 0.05).sum())
    benchmark.extra_info["work"] = (
        f"{above / 1e3:.0f}k candidates above the score threshold "
        f"(of {boxes.shape[0] * boxes.shape[1] / 1e3:.0f}k), sorted and compared per class"
    )
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
                out.append(
                    idx[torchvision.ops.batched_nms(boxes[b][valid], scores[b][valid], labels[b][valid], 0.45)][:200]
                )
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
    benchmark.extra_info["work"] = "8.7M IoUs"
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1000, 2, generator=g) * 0.7
    boxes = torch.cat([xy, xy + 0.3 * torch.rand(1000, 2, generator=g)], 1).to(device)
    anchors = default_boxes(SSD300_RESNET50).to(device)
    fn = {"compiled": ops.box_iou, "torchvision": torchvision.ops.box_iou, "reference": reference.box_iou}[impl]
    run(benchmark, lambda: fn(boxes, anchors), role="baseline" if impl == "torchvision" else "candidate", device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_box_decode(benchmark, device, impl):
    """Decoding 32 x 8732 SSD300 offsets."""
    benchmark.group = f"box_decode 32x8732 [{device}]"
    benchmark.extra_info["work"] = "0.28M boxes decoded (2 exp, 8 multiply-adds each)"
    offsets = torch.randn(32, 8732, 4, generator=torch.Generator().manual_seed(0)).to(device)
    anchors = default_boxes(SSD300_RESNET50).to(device)
    fn = ops.box_decode if impl == "compiled" else reference.box_decode
    run(
        benchmark,
        lambda: fn(offsets, anchors),
        role="candidate" if impl == "compiled" else "baseline",
        items=32,
        rounds=15,
        warmup=3,
        device=device,
    )  # a few ms: more rounds
