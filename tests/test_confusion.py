"""The confusion matrix (ssdfast.evaluation.confusion): a hand-counted case with one box of each kind
(correct, wrong class, missed, false, duplicate, on a crowd, below the threshold), the rule that a
detection of the right class wins the object, and a brute-force per-box loop twin on random images."""

import numpy as np
from pycocotools.coco import COCO

from ssdfast.evaluation.confusion import coco_confusion, image_confusion, most_common_classes, normalise_rows

CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 11, "name": "triangle"}]
CIRCLE, SQUARE, TRIANGLE, BACKGROUND = 0, 1, 2, 3


def coco_of(annotations: list[tuple]) -> COCO:
    """A pycocotools COCO of three 100x100 images; annotations: (image id, category id, xywh, iscrowd)."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)],
        "categories": CATEGORIES,
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}
            for n, (i, c, box, crowd) in enumerate(annotations)
        ],
    }
    coco.createIndex()
    return coco


def result(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def test_a_hand_counted_case_with_one_box_of_each_kind():
    coco = coco_of(
        [
            (1, 3, [10, 10, 30, 30], 0),  # a circle: found as a circle
            (1, 7, [50, 50, 30, 30], 0),  # a square: found as a circle
            (1, 11, [60, 10, 20, 20], 0),  # a triangle: only a detection below the threshold: missed
            (1, 3, [0, 70, 30, 30], 1),  # a crowd of circles: neither missed nor matched
            (2, 7, [20, 20, 40, 40], 0),  # image 2: a square no detection found: missed
            (3, 3, [20, 20, 40, 40], 0),  # image 3 is not evaluated: left out
        ]
    )
    results = [
        result(1, 3, [11, 11, 30, 30], 0.9),  # correct (IoU 0.88)
        result(1, 3, [52, 50, 30, 30], 0.8),  # wrong class (IoU 0.88 with the square)
        result(1, 3, [10, 10, 30, 30], 0.7),  # a second circle on the circle already found: false
        result(1, 11, [85, 85, 10, 10], 0.6),  # a triangle where there is nothing: false
        result(1, 7, [2, 72, 20, 20], 0.5),  # inside the crowd region: ignored
        result(1, 7, [60, 10, 20, 20], 0.2),  # on the triangle, but below the threshold: not used
        result(3, 7, [20, 20, 40, 40], 0.9),  # image 3: not evaluated
    ]
    counts = coco_confusion(coco, results, [3, 7, 11], score_threshold=0.3, image_ids=[1, 2])
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[CIRCLE, CIRCLE] = 1
    expected[SQUARE, CIRCLE] = 1
    expected[TRIANGLE, BACKGROUND] = 1
    expected[SQUARE, BACKGROUND] = 1  # image 2
    expected[BACKGROUND, CIRCLE] = 1
    expected[BACKGROUND, TRIANGLE] = 1
    np.testing.assert_array_equal(counts, expected)
    # every image evaluated: image 3's square detection on its circle is one more wrong class
    expected[CIRCLE, SQUARE] = 1
    np.testing.assert_array_equal(coco_confusion(coco, results, [3, 7, 11], score_threshold=0.3), expected)


def test_a_detection_of_the_right_class_wins_the_object_over_a_higher_scored_wrong_one():
    """A square detection (score 0.9, IoU 1) and a circle detection (score 0.8, IoU 0.6) on one circle:
    the circle is found correctly and the square is a false detection, not a confusion (AP50's count)."""
    circle = np.array([[0.0, 0.0, 10.0, 10.0]])
    detections = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0]])
    counts = image_confusion(circle, [CIRCLE], detections, [0.9, 0.8], [SQUARE, CIRCLE], 3)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[CIRCLE, CIRCLE] = expected[BACKGROUND, SQUARE] = 1
    np.testing.assert_array_equal(counts, expected)


def test_an_iou_of_exactly_the_threshold_matches_and_below_it_does_not():
    truth = np.array([[0.0, 0.0, 10.0, 10.0]])
    half = np.array([[0.0, 0.0, 10.0, 5.0]])  # IoU 0.5
    assert image_confusion(truth, [0], half, [0.9], [0], 1)[0, 0] == 1
    below = np.array([[0.0, 0.0, 10.0, 4.9]])
    np.testing.assert_array_equal(image_confusion(truth, [0], below, [0.9], [0], 1), [[0, 1], [1, 0]])


def brute_force(gt_boxes, gt_classes, det_boxes, det_scores, det_classes, num_classes, crowd_boxes, threshold=0.5):
    """The rule of ssdfast.evaluation.confusion, one box pair at a time in plain Python."""

    def iou(a, b, over_own_area=False):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        area_b = (b[2] - b[0]) * (b[3] - b[1])
        return w * h / (area_a if over_own_area else area_a + area_b - w * h)

    counts = [[0] * (num_classes + 1) for _ in range(num_classes + 1)]
    order = sorted(range(len(det_boxes)), key=lambda d: -det_scores[d])
    taken, matched = set(), set()
    for same_class_only in (True, False):
        for d in order:
            if d in matched:
                continue
            best, best_iou = None, -1.0
            for g in range(len(gt_boxes)):
                if g in taken or (same_class_only and gt_classes[g] != det_classes[d]):
                    continue
                overlap = iou(det_boxes[d], gt_boxes[g])
                if overlap >= threshold and overlap > best_iou:
                    best, best_iou = g, overlap
            if best is not None:
                taken.add(best)
                matched.add(d)
                counts[gt_classes[best]][det_classes[d]] += 1
    for g in range(len(gt_boxes)):
        if g not in taken:
            counts[gt_classes[g]][num_classes] += 1
    for d in range(len(det_boxes)):
        on_crowd = any(iou(det_boxes[d], c, over_own_area=True) >= threshold for c in crowd_boxes)
        if d not in matched and not on_crowd:
            counts[num_classes][det_classes[d]] += 1
    return np.array(counts)


def grid_boxes(rng, n):
    """n boxes on a coarse grid: many overlaps, IoUs near 0.5 and exact ties."""
    corner = rng.integers(0, 6, size=(n, 2))
    return np.concatenate([corner, corner + rng.integers(1, 5, size=(n, 2))], axis=1).astype(float)


def test_the_matrix_equals_a_brute_force_per_box_loop(test_seed):
    rng = np.random.default_rng(test_seed)
    num_classes = 4
    for _ in range(200):
        g, d, z = rng.integers(0, 7), rng.integers(0, 10), rng.integers(0, 2)
        gt_boxes, det_boxes, crowd_boxes = grid_boxes(rng, g), grid_boxes(rng, d), grid_boxes(rng, z)
        gt_classes, det_classes = rng.integers(0, num_classes, g), rng.integers(0, num_classes, d)
        scores = rng.permutation(d) / 10.0  # distinct: the order of the greedy matching is defined
        counts = image_confusion(gt_boxes, gt_classes, det_boxes, scores, det_classes, num_classes, crowd_boxes)
        twin = brute_force(gt_boxes, gt_classes, det_boxes, scores, det_classes, num_classes, crowd_boxes)
        np.testing.assert_array_equal(counts, twin)
        assert counts[:-1].sum() == g and counts[:, :-1].sum() <= d  # each object once; detections at most once


def test_rows_are_normalised_per_true_class_and_the_most_common_classes_are_kept():
    counts = np.array([[3, 1, 0, 0], [0, 0, 0, 0], [0, 2, 2, 4], [1, 0, 1, 0]])
    np.testing.assert_allclose(
        normalise_rows(counts), [[0.75, 0.25, 0, 0], [0, 0, 0, 0], [0, 0.25, 0.25, 0.5], [0.5, 0, 0.5, 0]]
    )
    assert most_common_classes(counts, 2) == [0, 2]  # 4 and 8 objects against 0
    assert most_common_classes(counts, 5) == [0, 1, 2]
    tied = np.array([[0, 0, 0], [0, 0, 0], [0, 3, 0]])  # no objects: the class detected more comes first
    assert most_common_classes(tied, 1) == [1]
