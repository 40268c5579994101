"""The training augmentation's fast pieces against their obvious twins: the vectorised crop test
against a loop over windows, OpenCV's uint8 colour jitter against the float32 formulas, and the
uint8 sample normalised on the device against the float path."""

import numpy as np
import pytest
import torch
from baselines import adjust_bcs_reference, valid_crops_loop

from ssdfast.data.draws import CROP_TRIALS, Draw, draw, draw_crops, jitter_factors, valid_crops
from ssdfast.data.transforms import SSDTransform, adjust_bcs, apply_crop, color_jitter, normalise, to_tensor

SEEDS = range(20)


def random_boxes(rng, n):
    xy = rng.uniform(0, 0.7, (n, 2))
    wh = rng.uniform(0.02, 0.3, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1).astype(np.float32)


def textured_image(rng, height=240, width=320):
    """Smooth colour gradients plus noise: every hue and saturation level, like a photo."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], axis=-1) * 100 + 128
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", SEEDS)
def test_vectorised_crop_test_equals_the_loop(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, int(rng.integers(1, 12)))
    crops = draw_crops(rng)
    assert crops.shape == (CROP_TRIALS, 4)
    for min_iou, max_iou in ((-np.inf, np.inf), (0.1, np.inf), (0.5, np.inf), (0.9, np.inf)):
        fast, loop = valid_crops(crops, boxes, min_iou, max_iou), valid_crops_loop(crops, boxes, min_iou, max_iou)
        assert np.array_equal(fast, loop), f"seed {seed}, min IoU {min_iou}"


def test_drawn_windows_lie_inside_the_image_with_the_ssd_sizes():
    crops = np.concatenate([draw_crops(np.random.default_rng(s)) for s in range(40)])
    w, h = crops[:, 2] - crops[:, 0], crops[:, 3] - crops[:, 1]
    assert (crops[:, :2] >= 0).all() and (crops[:, 2:] <= 1 + 1e-6).all()
    assert 0.3 <= w.min() and w.max() < 1 and 0.3 <= h.min() and h.max() < 1
    # Uniform placement: the left edge, as a fraction of the room left, averages one half.
    room = 1 - w
    assert abs(float(np.mean(crops[:, 0][room > 0.1] / room[room > 0.1])) - 0.5) < 0.03


def test_a_crop_keeps_the_boxes_centred_inside_in_window_coordinates():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.8]], np.float32)  # centres (0.2, 0.2), (0.75, 0.7)
    crop = np.array([0.0, 0.0, 0.5, 0.5], np.float32)
    cut, kept, labels = apply_crop(image, boxes, np.array([1, 2]), crop)
    assert cut.shape == (50, 100, 3) and labels.tolist() == [1]
    np.testing.assert_allclose(kept, [[0.2, 0.2, 0.6, 0.6]], atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crop_returns_a_window_the_test_accepts(seed):
    rng = np.random.default_rng(seed)
    image, boxes = textured_image(rng), random_boxes(rng, 5)
    cut, kept, labels = apply_crop(image, boxes, np.arange(1, 6), draw((seed, 0, 0), boxes).window)
    assert len(kept) == len(labels) >= 1 and ((kept >= 0) & (kept <= 1)).all(), f"seed {seed}"
    assert cut.shape[0] >= 1 and cut.shape[1] >= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_uint8_jitter_equals_the_float_formulas_within_rounding(seed):
    rng = np.random.default_rng(seed)
    image = textured_image(rng)
    factors = rng.uniform(0.5, 1.5, 3)  # beyond the drawn ranges (brightness 0.875-1.125, the others 0.5-1.5)
    diff = np.abs(adjust_bcs(image, *factors).astype(np.int16) - adjust_bcs_reference(image, *factors))
    # OpenCV rounds after each of the three steps (PIL's ImageEnhance does too); the twin once at the end.
    assert diff.max() <= 2 and diff.mean() < 0.5, (seed, factors, diff.max(), diff.mean())


class Fixed:
    """A stand-in for the Generator that returns the given draws in order."""

    def __init__(self, values):
        self.values = iter(values)

    def uniform(self, low, high):
        value = next(self.values)
        assert low <= value <= high, (low, value, high)
        return value


def jittered(image, values):
    """color_jitter with the factors jitter_factors draws from `values` (in its order)."""
    brightness, contrast, saturation, hue_shift = jitter_factors(Fixed(values))
    return color_jitter(image, Draw(None, False, brightness, contrast, saturation, hue_shift))


def test_jitter_applies_the_drawn_factors_in_order():
    """Brightness alone (contrast and saturation 1, no hue shift) is the image times the factor, rounded
    (OpenCV's float32 product may round a .5 the other way)."""
    image = textured_image(np.random.default_rng(0))
    out = jittered(image, [1.1, 1.0, 1.0, 0.0]).astype(np.int16)
    assert np.abs(out - np.clip(np.round(image * 1.1), 0, 255)).max() <= 1
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert jittered(red, [1.0, 1.0, 1.0, 0.002])[0, 0].tolist() == [255, 0, 0]  # 0.36 unit: no shift
    yellow = jittered(red, [1.0, 1.0, 1.0, 0.05])[0, 0]  # 0.05 turn = 9 units = 18 degrees
    assert yellow[0] == 255 and 70 <= yellow[1] <= 80 and yellow[2] == 0, yellow


def test_samples_are_uint8_and_normalise_to_the_float_path():
    image = textured_image(np.random.default_rng(1), 480, 640)
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    chw, _, _ = SSDTransform()(image, *empty)
    assert chw.dtype == torch.uint8 and chw.shape == (3, 300, 300)
    assert torch.equal(normalise(chw), to_tensor(image, 300))
    assert torch.equal(SSDTransform(normalised=True)(image, *empty)[0], to_tensor(image, 300))
