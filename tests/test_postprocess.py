"""Batched post-processing against the older-implementation-style per-image, per-class loop."""

import baselines
import torch

from ssdfast.anchors import SSDLITE300, default_boxes
from ssdfast.defaults import DetectionPolicy
from ssdfast.postprocess import postprocess, scale_to_image

VARIANCES = SSDLITE300.variances


def outputs(seed, batch=3, classes=6, sharp=4.0):
    g = torch.Generator().manual_seed(seed)
    anchors = default_boxes(SSDLITE300)
    locs = 0.5 * torch.randn(batch, len(anchors), 4, generator=g)
    confs = sharp * torch.randn(batch, len(anchors), classes + 1, generator=g)
    return locs, confs, anchors


def canonical(boxes, scores, labels):
    """Order detections by (score desc, label, box): equal scores (softmax saturating at 1.0 in float32)
    may come in either order from two correct implementations."""
    keys = [(-float(s), int(l), *[round(float(v), 4) for v in b]) for b, s, l in zip(boxes, scores, labels)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return boxes[order], scores[order], labels[order]


def assert_same(dets, loop, max_det):
    for i, (boxes, scores, labels) in enumerate(loop):
        n = int(dets.counts[i])
        assert n == min(len(scores), max_det)
        if n < len(scores):  # a tie across the cut could swap which equal-score detection is kept
            assert scores[n - 1] > scores[n]
        got = canonical(dets.boxes[i, :n], dets.scores[i, :n], dets.labels[i, :n])
        want = canonical(boxes[:n], scores[:n], labels[:n])
        torch.testing.assert_close(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        assert torch.equal(got[2], want[2])
        assert (dets.scores[i, n:] == 0).all() and (dets.labels[i, n:] == 0).all()


def test_matches_reference_loop():
    for seed in range(3):
        locs, confs, anchors = outputs(seed)
        policy = DetectionPolicy(nms_threshold=0.45)
        dets = postprocess(locs, confs, anchors, VARIANCES, policy)
        assert dets.boxes.shape == (3, 200, 4) and dets.scores.shape == (3, 200) and dets.counts.shape == (3,)
        assert_same(dets, baselines.postprocess_loop(locs, confs, anchors, VARIANCES, policy), 200)


def test_max_det_truncation_and_topk():
    locs, confs, anchors = outputs(5)
    policy = DetectionPolicy(max_detections=7, topk_per_class=50, nms_threshold=0.6)
    dets = postprocess(locs, confs, anchors, VARIANCES, policy)
    assert dets.boxes.shape == (3, 7, 4) and (dets.counts == 7).all()
    assert_same(dets, baselines.postprocess_loop(locs, confs, anchors, VARIANCES, policy), 7)
    assert (dets.scores[:, :-1] >= dets.scores[:, 1:]).all()


def test_empty_detections():
    locs, confs, anchors = outputs(1)
    confs[..., 0] = 50.0  # everything is background
    dets = postprocess(locs, confs, anchors, VARIANCES)
    assert (dets.counts == 0).all() and (dets.boxes == 0).all() and (dets.labels == 0).all()


def test_scale_to_image():
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 1.0]], [[0.0, 0.0, 1.0, 1.0]]])
    sizes = torch.tensor([[100, 200], [480, 640]])  # (height, width)
    torch.testing.assert_close(
        scale_to_image(boxes, sizes), torch.tensor([[[20.0, 20.0, 100.0, 100.0]], [[0.0, 0.0, 640.0, 480.0]]])
    )
