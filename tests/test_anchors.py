"""Default boxes: count, hand-computed values at several indices of each map, clamping."""

import math

import pytest
import torch

from ssdfast.anchors import SSD300_RESNET50, SSDLITE300, default_boxes


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
