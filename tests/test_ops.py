"""Every op against its pure-PyTorch twin, hand-computed cases and torchvision; errors; opcheck; compile."""

import zlib

import pytest
import torch
import torchvision
from conftest import CUDA, DEVICES, grid_boxes, random_boxes

from ssdfast import ops, reference
from ssdfast.anchors import SSD300_RESNET50, default_boxes

COMPILED = ops.LOAD_ERROR is None


def test_extension_is_built():
    """CI must exercise the compiled kernels, not silently the fallback."""
    assert COMPILED, f"ssdfast._C failed to load: {ops.LOAD_ERROR}"
    assert ops.backend("cpu") == "compiled"


# ---------------------------------------------------------------- IoU
def test_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 5.0, 6.0]])  # the second is degenerate
    iou = ops.box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("device", DEVICES)
def test_iou_matches_reference_and_torchvision(device):
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(300, g, device=device), random_boxes(200, g, device=device)
    iou = ops.box_iou(a, b)
    assert iou.shape == (300, 200) and iou.dtype == torch.float32
    assert torch.equal(iou.cpu(), reference.box_iou(a.cpu(), b.cpu()))  # same op order: bit-identical
    torch.testing.assert_close(iou, torchvision.ops.box_iou(a, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_iou_other_float_types_computed_in_fp32(device, dtype):
    g = torch.Generator().manual_seed(1)
    a, b = random_boxes(50, g, device=device).to(dtype), random_boxes(40, g, device=device).to(dtype)
    iou = ops.box_iou(a, b)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, reference.box_iou(a.float(), b.float()).to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_iou_empty(device):
    assert ops.box_iou(torch.zeros(0, 4, device=device), torch.rand(3, 4, device=device)).shape == (0, 3)


# ---------------------------------------------------------------- encode / decode
def test_encode_hand_computed():
    anchor = torch.tensor([[0.2, 0.2, 0.6, 0.4]])  # centre (0.4, 0.3), size (0.4, 0.2)
    box = torch.tensor([[0.3, 0.2, 0.5, 0.6]])  # centre (0.4, 0.4), size (0.2, 0.4)
    expected = torch.tensor(
        [[0.0, (0.4 - 0.3) / 0.2 / 0.1, torch.log(torch.tensor(0.5)) / 0.2, torch.log(torch.tensor(2.0)) / 0.2]]
    )
    torch.testing.assert_close(ops.box_encode(box, anchor), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_encode_decode_round_trip_and_reference(device):
    g = torch.Generator().manual_seed(2)
    anchors = default_boxes(SSD300_RESNET50).to(device)
    boxes = random_boxes(3 * len(anchors), g, device=device).view(3, -1, 4)
    offsets = ops.box_encode(boxes, anchors)
    torch.testing.assert_close(offsets, reference.box_encode(boxes, anchors), rtol=1e-5, atol=1e-5)
    back = ops.box_decode(offsets, anchors)
    torch.testing.assert_close(back, boxes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(back, reference.box_decode(offsets, anchors), rtol=1e-5, atol=1e-6)
    half = ops.box_decode(offsets.half(), anchors)
    assert half.dtype == torch.float32


# ---------------------------------------------------------------- matching
def hand_anchors():
    return torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]])


@pytest.mark.parametrize("device", DEVICES)
def test_match_hand_computed(device):
    anchors = hand_anchors().to(device)
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]], device=device)
    mask = torch.ones(1, 2, dtype=torch.bool, device=device)
    # a0, a1: exact matches; a2: IoU 0.25 with both (tie -> g0, below 0.5 -> background); a3: 0.14
    assert ops.match(gt, mask, anchors, 0.5).tolist() == [[0, 1, -1, -1]]


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_exactly_at_the_iou_threshold(device):
    """Exactly at the threshold is *not* above it, in matching (positive: IoU > 0.5) and in NMS
    (suppressed: IoU > t), as torchvision does; the older implementation used >= for NMS."""
    gt = torch.tensor([[[0.0, 0.0, 1.0, 0.5]]], device=device)
    anchors = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]], device=device)  # IoU 1 and exactly 0.5
    assert ops.match(gt, torch.ones(1, 1, dtype=torch.bool, device=device), anchors, 0.5).tolist() == [[0, -1]]
    assert ops.match(gt, torch.ones(1, 1, dtype=torch.bool, device=device), anchors, 0.49).tolist() == [[0, 0]]
    boxes, scores = anchors.flip(0), torch.tensor([0.9, 0.8], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1] == torchvision.ops.nms(boxes, scores, 0.5).tolist()
    assert ops.nms(boxes, scores, 0.49).tolist() == [0] == torchvision.ops.nms(boxes, scores, 0.49).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_match_low_iou_ground_truth_still_claims_its_best_anchor(device):
    anchors = hand_anchors().to(device)
    gt = torch.tensor([[[0.9, 0.9, 0.95, 0.95]]], device=device)  # IoU 0.01 with a1, its best
    assert ops.match(gt, torch.ones(1, 1, dtype=torch.bool, device=device), anchors, 0.5).tolist() == [[-1, 0, -1, -1]]


@pytest.mark.parametrize("device", DEVICES)
def test_match_contested_anchor_goes_to_the_later_ground_truth(device):
    anchors = hand_anchors().to(device)
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.45, 0.45], [0.0, 0.0, 0.5, 0.5]]], device=device)
    mask = torch.tensor([[True, True, False]], device=device)  # the third is padding
    assert ops.match(gt, mask, anchors, 0.5).tolist()[0][0] == 1
    gt_same = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]], device=device)  # identical boxes
    assert ops.match(gt_same, torch.ones(1, 2, dtype=torch.bool, device=device), anchors, 0.5).tolist() == [
        [-1, 1, -1, -1]
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["random", "grid_ties", "tiny_and_huge", "one_covers_many", "many_gt"])
def test_match_encode_agrees_with_reference(device, case):
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()) % 1000)  # the same in every process
    anchors = default_boxes(SSD300_RESNET50)
    B, G = 4, 12
    if case == "random":
        gt = random_boxes(B * G, g).view(B, G, 4)
    elif case == "grid_ties":
        gt = grid_boxes(B * G, g).view(B, G, 4)
        anchors = grid_boxes(500, g)  # anchors on the same grid: identical boxes, exact IoU ties
    elif case == "tiny_and_huge":
        gt = torch.cat(
            [random_boxes(B * G // 2, g, max_size=0.01), torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(B * G // 2, 1)]
        ).view(B, G, 4)
    elif case == "one_covers_many":
        gt = torch.tensor([[0.1, 0.1, 0.9, 0.9]]).repeat(B * G, 1).view(B, G, 4)
    else:
        G = 100
        gt = random_boxes(B * G, g, max_size=0.2).view(B, G, 4)
    labels = torch.randint(1, 81, (B, G), generator=g)
    labels[0] = 0  # an image with no ground truth at all
    labels[1, G // 2 :] = 0  # padding
    labels[2, ::3] = 0  # padding in the middle
    gt, labels, anchors = gt.to(device), labels.to(device), anchors.to(device)

    matched = ops.match(gt, labels > 0, anchors, 0.5)
    assert torch.equal(matched.cpu(), reference.match(gt.cpu(), labels.cpu() > 0, anchors.cpu(), 0.5))
    assert (matched[0] == -1).all()
    offsets, out_labels = ops.match_encode(gt, labels, anchors)
    ref_offsets, ref_labels = reference.match_encode(gt.cpu(), labels.cpu(), anchors.cpu())
    assert torch.equal(out_labels.cpu(), ref_labels)
    torch.testing.assert_close(offsets.cpu(), ref_offsets, rtol=1e-5, atol=1e-5)
    assert torch.equal(out_labels > 0, matched >= 0)
    assert (offsets[out_labels == 0] == 0).all()
    # Every valid ground truth owns at least one anchor.
    for b in range(1, B):
        for j in torch.nonzero(labels[b] > 0).flatten().tolist():
            assert (matched[b] == j).any() or _claimed_by_later(gt[b], labels[b], anchors, j)


def _claimed_by_later(gt, labels, anchors, j):
    """True if ground truth j lost its best anchor to a later one (the only way to own none)."""
    best = reference.box_iou(gt[j : j + 1].cpu(), anchors.cpu()).argmax()
    later = [k for k in range(j + 1, len(gt)) if labels[k] > 0]
    return any(reference.box_iou(gt[k : k + 1].cpu(), anchors.cpu()).argmax() == best for k in later)


@pytest.mark.parametrize("device", DEVICES)
def test_match_with_no_ground_truth_slots(device):
    anchors = hand_anchors().to(device)
    offsets, labels = ops.match_encode(
        torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, dtype=torch.long, device=device), anchors
    )
    assert offsets.shape == (2, 4, 4) and (offsets == 0).all() and (labels == 0).all()


# ---------------------------------------------------------------- NMS
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(device, iou):
    g = torch.Generator().manual_seed(3)
    boxes, scores = random_boxes(500, g, device=device), torch.rand(500, generator=g).to(device)
    assert torch.equal(ops.nms(boxes, scores, iou), torchvision.ops.nms(boxes, scores, iou))
    idxs = torch.randint(0, 5, (500,), generator=g).to(device)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, iou), torchvision.ops.batched_nms(boxes, scores, idxs, iou))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_padded_matches_reference_and_torchvision(device):
    g = torch.Generator().manual_seed(4)
    B, N, K = 5, 400, 50
    boxes = random_boxes(B * N, g).view(B, N, 4)
    scores = torch.rand(B, N, generator=g)
    classes = torch.randint(1, 6, (B, N), generator=g)
    keep, counts = ops.batched_nms_padded(boxes.to(device), scores.to(device), classes.to(device), 0.45, 0.2, K)
    ref_keep, ref_counts = reference.batched_nms_padded(boxes, scores, classes, 0.45, 0.2, K)
    assert keep.shape == (B, K) and counts.shape == (B,)
    assert torch.equal(keep.cpu(), ref_keep) and torch.equal(counts.cpu(), ref_counts)
    for b in range(B):  # oracle: torchvision per image, then the best K
        valid = scores[b] > 0.2
        idx = torch.nonzero(valid).flatten()
        tv = idx[torchvision.ops.batched_nms(boxes[b][valid], scores[b][valid], classes[b][valid], 0.45)][:K]
        assert keep[b, : counts[b]].cpu().tolist() == tv.tolist()
        assert (keep[b, counts[b] :] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_padded_ties_and_identical_boxes(device):
    g = torch.Generator().manual_seed(5)
    B, N = 3, 300
    boxes = grid_boxes(B * N, g).view(B, N, 4)
    scores = torch.randint(0, 5, (B, N), generator=g).float() / 4  # many equal scores
    classes = torch.randint(0, 3, (B, N), generator=g)
    keep, counts = ops.batched_nms_padded(boxes.to(device), scores.to(device), classes.to(device), 0.5, 0.0, N)
    ref_keep, ref_counts = reference.batched_nms_padded(boxes, scores, classes, 0.5, 0.0, N)
    assert torch.equal(keep.cpu(), ref_keep) and torch.equal(counts.cpu(), ref_counts)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_padded_empty_inputs(device):
    keep, counts = ops.batched_nms_padded(
        torch.zeros(2, 0, 4, device=device),
        torch.zeros(2, 0, device=device),
        torch.zeros(2, 0, dtype=torch.long, device=device),
        0.5,
        0.0,
        7,
    )
    assert keep.shape == (2, 7) and (keep == -1).all() and (counts == 0).all()
    scores = torch.full((1, 4), 0.01, device=device)  # everything below the score threshold
    keep, counts = ops.batched_nms_padded(
        torch.rand(1, 4, 4, device=device), scores, torch.zeros(1, 4, dtype=torch.long, device=device), 0.5, 0.05, 3
    )
    assert (keep == -1).all() and counts.item() == 0


# ---------------------------------------------------------------- bad input
@pytest.mark.skipif(not COMPILED, reason="input checks live in the compiled ops")
@pytest.mark.parametrize("device", DEVICES)
def test_clear_errors(device):
    d = device
    anchors = torch.rand(10, 4, device=d)
    with pytest.raises(RuntimeError, match=r"boxes1 must have shape \[N, 4\]"):
        ops.box_iou(torch.rand(3, 5, device=d), anchors)
    with pytest.raises(RuntimeError, match="must be a floating point tensor"):
        ops.box_iou(torch.ones(3, 4, dtype=torch.long, device=d), anchors)
    with pytest.raises(RuntimeError, match=r"gt_boxes must have shape \[B, G, 4\]"):
        ops.match_encode(torch.rand(5, 4, device=d), torch.ones(5, dtype=torch.long, device=d), anchors)
    with pytest.raises(RuntimeError, match=r"gt_labels must have shape \[B, G\]"):
        ops.match_encode(torch.rand(2, 5, 4, device=d), torch.ones(3, 5, dtype=torch.long, device=d), anchors)
    with pytest.raises(RuntimeError, match="gt_labels must be an int64 or int32"):
        ops.match_encode(torch.rand(2, 5, 4, device=d), torch.ones(2, 5, device=d), anchors)
    with pytest.raises(RuntimeError, match="gt_mask must be a bool"):
        ops.match(torch.rand(2, 5, 4, device=d), torch.ones(2, 5, device=d), anchors)
    with pytest.raises(RuntimeError, match="with A = 10"):
        ops.box_decode(torch.rand(2, 11, 4, device=d), anchors)
    with pytest.raises(RuntimeError, match=r"scores must have shape \[B, N\]"):
        ops.batched_nms_padded(
            torch.rand(2, 5, 4, device=d),
            torch.rand(2, 6, device=d),
            torch.zeros(2, 6, dtype=torch.long, device=d),
            0.5,
        )
    with pytest.raises(RuntimeError, match=r"iou_threshold must be in \[0, 1\]"):
        ops.nms(torch.rand(5, 4, device=d), torch.rand(5, device=d), 1.5)


@CUDA
@pytest.mark.cuda
def test_device_mismatch_is_a_clear_error():
    with pytest.raises(RuntimeError, match="must be on the same device"):
        torch.ops.ssdfast.box_iou(torch.rand(3, 4, device="cuda"), torch.rand(3, 4))
    with pytest.raises(RuntimeError, match="must be on the same device"):
        torch.ops.ssdfast.match_encode(
            torch.rand(1, 2, 4, device="cuda"),
            torch.ones(1, 2, dtype=torch.long, device="cuda"),
            torch.rand(5, 4),
            0.5,
            0.1,
            0.2,
        )


# ---------------------------------------------------------------- opcheck / compile
def _op_samples(device):
    g = torch.Generator().manual_seed(6)
    anchors = random_boxes(50, g, device=device)
    gt = random_boxes(2 * 6, g, device=device).view(2, 6, 4)
    labels = torch.randint(0, 4, (2, 6), generator=g).to(device)
    boxes, scores = random_boxes(2 * 30, g, device=device).view(2, 30, 4), torch.rand(2, 30, generator=g).to(device)
    return {
        "box_iou": (anchors, gt[0]),
        "box_encode": (
            gt.new_empty(2, 50, 4).copy_(random_boxes(100, g, device=device).view(2, 50, 4)),
            anchors,
            0.1,
            0.2,
        ),
        "box_decode": (torch.randn(2, 50, 4, generator=g).to(device), anchors, 0.1, 0.2),
        "match": (gt, labels > 0, anchors, 0.5),
        "match_encode": (gt, labels, anchors, 0.5, 0.1, 0.2),
        "batched_nms_padded": (boxes, scores, torch.randint(0, 3, (2, 30), generator=g).to(device), 0.5, 0.1, 10),
        "nms": (boxes[0], scores[0], 0.5),
    }


@pytest.mark.skipif(not COMPILED, reason="needs ssdfast._C")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ops.OP_NAMES)
def test_opcheck(device, op):
    tests = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if op != "nms":  # data-dependent output size: not traceable by AOT dispatch without dynamic shapes
        tests.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(getattr(torch.ops.ssdfast, op).default, _op_samples(device)[op], test_utils=tests)


@pytest.mark.skipif(not COMPILED, reason="needs ssdfast._C")
@pytest.mark.parametrize("device", DEVICES)
def test_ops_under_torch_compile_fullgraph(device):
    def targets_and_nms(gt, labels, anchors, boxes, scores, classes):
        offsets, target_labels = ops.match_encode(gt, labels, anchors)
        keep, counts = ops.batched_nms_padded(ops.box_decode(boxes, anchors), scores, classes, 0.45, 0.05, 20)
        return offsets, target_labels, keep, counts, ops.box_iou(anchors, anchors)

    g = torch.Generator().manual_seed(7)
    anchors = random_boxes(60, g, device=device)
    inputs = (
        random_boxes(24, g, device=device).view(2, 12, 4),
        torch.randint(0, 5, (2, 12), generator=g).to(device),
        anchors,
        0.1 * torch.randn(2, 60, 4, generator=g).to(device),
        torch.rand(2, 60, generator=g).to(device),
        torch.randint(0, 4, (2, 60), generator=g).to(device),
    )
    compiled = torch.compile(targets_and_nms, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*inputs), targets_and_nms(*inputs)):
        assert torch.equal(got, want)


# ---------------------------------------------------------------- CPU vs CUDA
@CUDA
@pytest.mark.cuda
def test_cuda_matches_cpu_on_ssd_workload():
    g = torch.Generator().manual_seed(8)
    anchors = default_boxes(SSD300_RESNET50)
    gt = random_boxes(32 * 50, g).view(32, 50, 4)
    labels = torch.randint(1, 81, (32, 50), generator=g) * (torch.rand(32, 50, generator=g) < 0.3)
    cpu = ops.match_encode(gt, labels, anchors)
    gpu = ops.match_encode(gt.cuda(), labels.cuda(), anchors.cuda())
    assert torch.equal(cpu[1], gpu[1].cpu())
    torch.testing.assert_close(cpu[0], gpu[0].cpu(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- fallback without a build
def test_import_without_the_extension_falls_back_to_the_reference(tmp_path):
    """A broken or skipped build: `import ssdfast` still works and every op runs its pure-PyTorch twin."""
    import subprocess
    import sys

    script = """
import sys, warnings
sys.modules["ssdfast._C"] = None  # makes `from . import _C` raise ImportError, as a missing build does
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from ssdfast import ops, reference
assert any("ssdfast._C is not available" in str(w.message) for w in caught)
import torch
assert ops.backend("cpu") == "reference" and ops.backend("cuda") == "reference"
g = torch.Generator().manual_seed(0)
xy = torch.rand(12, 2, generator=g) * 0.5
gt = torch.cat([xy, xy + 0.3], 1).view(2, 6, 4)
labels = torch.randint(0, 4, (2, 6), generator=g)
anchors = torch.cat([xy, xy + 0.2], 1)
for got, want in zip(ops.match_encode(gt, labels, anchors), reference.match_encode(gt, labels, anchors)):
    assert torch.equal(got, want)
keep, counts = ops.batched_nms_padded(gt, torch.rand(2, 6, generator=g), labels, 0.5, 0.0, 4)
assert keep.shape == (2, 4)
print("fallback ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr


# ---------------------------------------------------------------- non-finite scores and boxes
@pytest.mark.parametrize("device", DEVICES)
def test_nms_non_finite_scores_and_boxes_same_on_every_backend(device):
    """NaN scores are never kept (a descending sort ranks NaN first: the CUDA kernel once dropped
    every later candidate after one), +inf scores rank first, -inf fall below any threshold, and a
    box with a NaN coordinate neither suppresses nor is suppressed (its IoU compares false)."""
    g = torch.Generator().manual_seed(11)
    boxes = random_boxes(2 * 150, g, max_size=0.1).view(2, 150, 4)  # small: few overlaps
    scores = torch.rand(2, 150, generator=g)
    classes = torch.randint(0, 3, (2, 150), generator=g)
    scores[0, [0, 7, 64, 65, 149]] = float("nan")  # one at a chunk start (64)
    scores[0, 3] = float("inf")
    scores[1, 5] = float("-inf")
    boxes[1, 9, 2] = float("nan")
    scores[1, 9] = 0.99
    keep, counts = ops.batched_nms_padded(boxes.to(device), scores.to(device), classes.to(device), 0.5, 0.05, 100)
    ref_keep, ref_counts = reference.batched_nms_padded(boxes, scores, classes, 0.5, 0.05, 100)
    assert torch.equal(keep.cpu(), ref_keep) and torch.equal(counts.cpu(), ref_counts)
    kept0 = set(ref_keep[0, : ref_counts[0]].tolist())
    assert not kept0 & {0, 7, 64, 65, 149} and 3 in kept0 and ref_keep[0, 0] == 3
    assert 5 not in set(ref_keep[1].tolist()) and 9 in set(ref_keep[1].tolist())
    # Candidates after the NaNs are still visited: many more than one chunk survive.
    assert ref_counts[0] > 64
    single = ops.nms(boxes[0].to(device), scores[0].to(device), 0.5)
    assert torch.equal(single.cpu(), reference.nms(boxes[0], scores[0], 0.5))
    assert not set(single.tolist()) & {0, 7, 64, 65, 149}


# ---------------------------------------------------------------- vectorised CPU paths (issue 10)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_anchors", [1, 3, 13, 500])
def test_match_heavy_padding_and_odd_anchor_counts_agree_exactly(device, num_anchors):
    """The CPU matcher compacts the valid boxes and sweeps anchors 8 at a time (padded arrays): few
    valid boxes scattered over G = 128 slots, the last slot included, and anchor counts that are not
    a multiple of 8, with exact IoU ties (grid boxes), must give the reference's answer exactly."""
    g = torch.Generator().manual_seed(num_anchors)
    B, G = 6, 128
    gt = grid_boxes(B * G, g).view(B, G, 4)
    anchors = grid_boxes(num_anchors, g)
    labels = torch.zeros(B, G, dtype=torch.long)
    for b in range(1, B):
        slots = torch.randperm(G, generator=g)[: 2 * b]
        labels[b, slots] = torch.randint(1, 81, (len(slots),), generator=g)
    labels[B - 1, G - 1] = 7
    gt, labels, anchors = gt.to(device), labels.to(device), anchors.to(device)
    matched = ops.match(gt, labels > 0, anchors, 0.5)
    assert torch.equal(matched.cpu(), reference.match(gt.cpu(), labels.cpu() > 0, anchors.cpu(), 0.5))
    offsets, out_labels = ops.match_encode(gt, labels, anchors)
    ref_offsets, ref_labels = reference.match_encode(gt.cpu(), labels.cpu(), anchors.cpu())
    assert torch.equal(out_labels.cpu(), ref_labels)
    torch.testing.assert_close(offsets.cpu(), ref_offsets, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_padded_any_class_ids_and_signed_zero_scores(device):
    """Class ids outside the CPU kernel's direct table (negative, >= 1024, huge) go through its hash
    map; -0.0 and +0.0 are equal scores (input order decides); a large max_output makes the scan run
    past the lazily sorted prefix of the candidates."""
    g = torch.Generator().manual_seed(12)
    B, N = 2, 1200
    boxes = random_boxes(B * N, g, max_size=0.3).view(B, N, 4)
    scores = torch.rand(B, N, generator=g)
    scores[0, ::7] = 0.0
    scores[0, 3::7] = -0.0
    ids = torch.tensor([-5, 0, 3, 90, 1023, 1024, 10**12])
    classes = ids[torch.randint(0, len(ids), (B, N), generator=g)]
    for threshold in (-1.0, 0.3):
        keep, counts = ops.batched_nms_padded(
            boxes.to(device), scores.to(device), classes.to(device), 0.5, threshold, N
        )
        ref_keep, ref_counts = reference.batched_nms_padded(boxes, scores, classes, 0.5, threshold, N)
        assert torch.equal(keep.cpu(), ref_keep) and torch.equal(counts.cpu(), ref_counts)


@pytest.mark.parametrize("device", DEVICES)
def test_decode_extremes_and_odd_shapes_close_to_reference(device):
    """The CPU decode's vectorised exp: overflow to inf, underflow to 0, NaN kept, and shapes with
    leading dimensions and an anchor count that is not a multiple of 8."""
    g = torch.Generator().manual_seed(13)
    anchors = random_boxes(13, g).to(device)
    offsets = torch.randn(2, 3, 13, 4, generator=g) * 3
    offsets[0, 0, 0, 2] = 500.0  # exp(100): inf
    offsets[0, 0, 1, 3] = -1000.0  # exp(-200): 0
    offsets[0, 0, 2, 2] = float("nan")
    offsets[0, 1, 3, 2:] = torch.tensor([440.0, -436.0])  # near the overflow / underflow limits
    offsets = offsets.to(device)
    torch.testing.assert_close(
        ops.box_decode(offsets, anchors), reference.box_decode(offsets, anchors), rtol=1e-5, atol=1e-6, equal_nan=True
    )
