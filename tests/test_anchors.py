"""Default boxes: count, hand-computed values at several indices of each map, clamping; the box coding's
variances travel with the spec from the training targets to the post-processing."""

import functools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ssdfast.anchors import SSD300_RESNET50, SSDLITE300, default_boxes
from ssdfast.models import build_model
from ssdfast.postprocess import decode_scores, postprocess
from ssdfast.training.loss import MultiBoxLoss
from ssdfast.training.step import TrainStep


def test_counts():
    assert default_boxes(SSD300_RESNET50).shape == (8732, 4) and SSD300_RESNET50.num_anchors == 8732
    assert default_boxes(SSDLITE300).shape == (3000, 4) and SSDLITE300.num_anchors == 3000


# (index, expected cx, cy, w, h), computed by hand from docs/ssd.md section 1 (fk = 300 / step).
SSD300_CASES = [
    (0, 0.5 / 37.5, 0.5 / 37.5, 0.07, 0.07),  # map 0, shape (s1, s1), location (0, 0)
    (1, 1.5 / 37.5, 0.5 / 37.5, 0.07, 0.07),  # location (0, 1): j moves cx
    (38, 0.5 / 37.5, 1.5 / 37.5, 0.07, 0.07),  # location (1, 0): i moves cy
    (1444, 0.5 / 37.5, 0.5 / 37.5, math.sqrt(21 * 45) / 300, math.sqrt(21 * 45) / 300),  # shape (s', s')
    (
        2 * 1444 + 37,
        37.5 / 37.5,
        0.5 / 37.5,
        0.07 * math.sqrt(2),
        0.07 / math.sqrt(2),
    ),  # ratio 2, (w, h); cx clamps to 1
    (3 * 1444, 0.5 / 37.5, 0.5 / 37.5, 0.07 / math.sqrt(2), 0.07 * math.sqrt(2)),  # its transpose
    (5776, 0.5 / 18.75, 0.5 / 18.75, 0.15, 0.15),  # map 1 starts
    (5776 + 5 * 361 + 18, 18.5 / 18.75, 0.5 / 18.75, 0.15 / math.sqrt(3), 0.15 * math.sqrt(3)),  # ratio 3 transposed
    (8728, 0.5, 0.5, 0.87, 0.87),  # last map (1x1), first shape
    (8731, 0.5, 0.5, 0.87 / math.sqrt(2), 1.0),  # last anchor: h = 0.87 sqrt(2) > 1, clamped
]


@pytest.mark.parametrize("index,cx,cy,w,h", SSD300_CASES)
def test_ssd300_values(index, cx, cy, w, h):
    expected = torch.tensor([cx, cy, w, h]).clamp(0, 1)
    torch.testing.assert_close(default_boxes(SSD300_RESNET50, "xywh")[index], expected)


def test_ssdlite_values():
    boxes = default_boxes(SSDLITE300, "xywh")
    torch.testing.assert_close(boxes[0], torch.tensor([0.5 / 18.75, 0.5 / 18.75, 0.2, 0.2]))
    s = math.sqrt(60 * 105) / 300
    torch.testing.assert_close(boxes[361], torch.tensor([0.5 / 18.75, 0.5 / 18.75, s, s]))
    # map 4 (2x2, step 150 -> fk 2): starts after 6 * (361 + 100 + 25 + 9)
    torch.testing.assert_close(boxes[2970 + 3], torch.tensor([0.75, 0.75, 0.8, 0.8]))


def test_clamped_and_xyxy_consistent():
    xywh = default_boxes(SSD300_RESNET50, "xywh")
    xyxy = default_boxes(SSD300_RESNET50, "xyxy")
    assert (xywh >= 0).all() and (xywh <= 1).all()
    torch.testing.assert_close(xyxy[:, :2], xywh[:, :2] - xywh[:, 2:] / 2)
    torch.testing.assert_close(xyxy[:, 2:], xywh[:, :2] + xywh[:, 2:] / 2)
    xyxy.zero_()  # a copy: the cache is not modified
    assert default_boxes(SSD300_RESNET50).abs().sum() > 0


# Two images, normalised xyxy ground truth padded to G = 2 (label 0: padding); boxes of one class apart.
GT_BOXES = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.55, 0.5, 0.9, 0.95]], [[0.3, 0.2, 0.7, 0.8], [0.0, 0.0, 0.0, 0.0]]])
GT_LABELS = torch.tensor([[1, 2], [3, 0]])
ODD_CODING = (0.05, 0.3)  # (center_variance, size_variance): not SSD's (0.1, 0.2)


class RecordTargets(MultiBoxLoss):
    """The MultiBox loss, keeping the targets the training step hands it."""

    def forward(self, locs, confs, target_offsets, target_labels):
        self.targets = target_offsets, target_labels
        return super().forward(locs, confs, target_offsets, target_labels)


@functools.cache  # one training step each (seconds on 2 cores); the tests only read the results
def training_targets(
    center_variance: float, size_variance: float
) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """(offsets [2, A, 4], labels [2, A], the model) as TrainStep encodes them for an SSDLite whose
    AnchorSpec has this box coding (one step at lr 0: the weights do not matter)."""
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3)
    model.anchor_spec = replace(model.anchor_spec, center_variance=center_variance, size_variance=size_variance)
    loss = RecordTargets()
    TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn=loss)(
        torch.randn(2, 3, 300, 300), GT_BOXES, GT_LABELS
    )
    return *loss.targets, model


def test_targets_encoded_in_training_decode_back_to_the_ground_truth():
    offsets, labels, model = training_targets(*ODD_CODING)
    assert model.anchor_spec.variances == (0.05, 0.3)
    logits = 20.0 * F.one_hot(labels, 4).float()  # a network that outputs exactly its targets
    boxes, _ = decode_scores(offsets, logits, model.anchors, model.anchor_spec.variances)
    for i in range(2):
        positive = labels[i] > 0
        real = GT_LABELS[i] > 0
        near = (boxes[i][positive][:, None] - GT_BOXES[i][None]).abs().amax(dim=-1) < 1e-5  # [P, G]
        same = near & (labels[i][positive][:, None] == GT_LABELS[i][None])
        assert same.any(dim=1).all() and same.any(dim=0)[real].all()  # every positive is its ground truth
        # The check can fail: decoded with SSD's own coding, the same offsets miss the ground truth.
        wrong, _ = decode_scores(offsets[i : i + 1], logits[i : i + 1], model.anchors, SSDLITE300.variances)
        assert (wrong[0][positive][:, None] - GT_BOXES[i][None]).abs().amax(dim=-1).min(dim=1).values.max() > 1e-2
    dets = postprocess(offsets, logits, model.anchors, model.anchor_spec.variances)
    assert dets.counts.tolist() == [2, 1]  # one detection per ground-truth box: its copies suppressed
    for i, n in enumerate(dets.counts.tolist()):
        order = dets.labels[i, :n].argsort()
        torch.testing.assert_close(dets.boxes[i, :n][order], GT_BOXES[i, :n], atol=1e-5, rtol=0)


def test_the_variances_scale_the_encoded_offsets():
    odd, odd_labels, _ = training_targets(*ODD_CODING)
    ssd, ssd_labels, _ = training_targets(*SSDLITE300.variances)
    assert torch.equal(odd_labels, ssd_labels) and (ssd_labels > 0).any()
    positive = ssd_labels > 0
    ratio = torch.tensor([0.1 / 0.05, 0.1 / 0.05, 0.2 / 0.3, 0.2 / 0.3])  # offsets are divided by them
    torch.testing.assert_close(odd[positive], ssd[positive] * ratio, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(odd[positive], ssd[positive])
