"""The evaluation tensor: PyTorch path = PIL pipeline (the older implementation's, NVIDIA's) = DALI path, on images with
high-frequency content (checkerboards, text, noise, hard edges), shrunk, stretched and enlarged.

The oracle is the older implementation's evaluation pipeline: PIL image -> resize((300, 300), BILINEAR) -> ToTensor ->
Normalize(ImageNet). Images are PNG (lossless: every decoder reads the same pixels) in a COCO-layout
folder, read through the real code paths (CocoDetection; build_loader(backend="dali")).

Tolerances, in normalised units (uint8 / 255, minus the mean, over the std): one uint8 level is at most
LEVEL = 1 / (255 * 0.224) = 0.0175. The PyTorch path must be within one level of PIL at every pixel and
within MEAN_TOL = 0.005 on average (rounding of the two fixed-point kernels). DALI must agree with the
PyTorch path within MEAN_TOL on average and within one level on 99% of the values; its outermost
row/column may differ more when shrinking (DALI extends the image at its border, PIL renormalises the
cut filter: ssdfast/data/dali.py `resize`).
"""

import json

import cv2
import numpy as np
import pytest
import torch

from ssdfast.data import CocoDetection, build_loader
from ssdfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise

LEVEL = 1 / (255 * float(IMAGENET_STD.min())) + 1e-4  # one uint8 step, normalised (+ float32 slack)
MEAN_TOL = 0.005
KINDS = ("checker", "text", "noise", "edges")
SIZES = ((640, 480), (1000, 300), (480, 640), (200, 150))  # (width, height): shrink, squash, portrait, enlarge
CASES = [(kind, size) for kind in KINDS for size in SIZES]


def detailed_image(kind: str, width: int, height: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 [height, width, 3] full of detail an unfiltered resize aliases."""
    rng = np.random.default_rng(seed)
    if kind == "checker":  # 3-pixel squares: above the Nyquist limit of any shrink to 300
        yy, xx = np.mgrid[0:height, 0:width]
        cells = ((yy // 3 + xx // 3) % 2 * 255).astype(np.uint8)
        return np.stack([cells, 255 - cells, cells // 2], axis=-1)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = np.full((height, width, 3), 235 if kind == "text" else 0, np.uint8)
    if kind == "text":
        for i, y in enumerate(range(15, height, 22)):
            color = tuple(int(c) for c in rng.integers(0, 200, 3))
            cv2.putText(
                image,
                "SSD 300 fast quick brown fox 0123456789"[i % 7 :],
                (2, y),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.6,
                color,
                1,
                cv2.LINE_8,
            )
        return image
    for _ in range(40):  # edges: hard-edged rectangles (filled and outlined) and 1-pixel lines
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(5, width // 2)), int(rng.integers(5, height // 2))
        cv2.rectangle(
            image, (x, y), (x + w, y + h), tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.choice([-1, 1, 2]))
        )
    for _ in range(30):
        p, q = rng.integers(0, [width, height], size=(2, 2))
        cv2.line(
            image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), tuple(int(c) for c in rng.integers(0, 256, 3)), 1
        )
    return image


@pytest.fixture(scope="module")
def detailed_coco(tmp_path_factory):
    """A val split in the COCO layout: one PNG per case (image id = case index + 1), one box each."""
    root = tmp_path_factory.mktemp("detailed_coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (kind, (width, height)) in enumerate(CASES, 1):
        name = f"{kind}_{width}x{height}.png"
        cv2.imwrite(str(root / "val2017" / name), cv2.cvtColor(detailed_image(kind, width, height), cv2.COLOR_RGB2BGR))
        images.append({"id": i, "file_name": name, "width": width, "height": height})
        anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [width / 4, height / 4, width / 2, height / 2],
                "area": width * height / 4,
                "iscrowd": 0,
            }
        )
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]})
    )
    return root


def pil_pipeline(path) -> torch.Tensor:
    """The oracle: the older implementation's evaluation preprocessing, [3, 300, 300] float32."""
    from PIL import Image
    from torchvision import transforms

    image = Image.open(path).convert("RGB").resize((300, 300), Image.BILINEAR)
    normalize = transforms.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())
    return normalize(transforms.ToTensor()(image))


@pytest.fixture(scope="module")
def pytorch_path(detailed_coco) -> dict[int, torch.Tensor]:
    data = CocoDetection(detailed_coco, "val")
    return {s["image_id"]: normalise(s["image"]) for s in (data[i] for i in range(len(data)))}


def case_id(case):
    kind, (width, height) = case
    return f"{kind}-{width}x{height}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pytorch_path_equals_the_pil_pipeline(case, detailed_coco, pytorch_path):
    kind, (width, height) = case
    expected = pil_pipeline(detailed_coco / "val2017" / f"{kind}_{width}x{height}.png")
    diff = (pytorch_path[CASES.index(case) + 1] - expected).abs()
    assert diff.mean() < MEAN_TOL and diff.max() <= LEVEL, (float(diff.mean()), float(diff.max()))


def test_the_images_catch_a_resize_without_antialiasing(detailed_coco):
    """The comparison has teeth: OpenCV INTER_LINEAR (no antialiasing; the old resize) is far from PIL on
    every shrunk image here (mean above MEAN_TOL, some pixel many levels off)."""
    for kind, (width, height) in CASES:
        if width * height <= 300 * 300:
            continue
        path = detailed_coco / "val2017" / f"{kind}_{width}x{height}.png"
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        aliased = cv2.resize(image, (300, 300), interpolation=cv2.INTER_LINEAR)
        aliased = torch.from_numpy(((aliased / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
        diff = (aliased.float() - pil_pipeline(path)).abs()
        assert diff.mean() > MEAN_TOL and diff.max() > 10 * LEVEL, (kind, width, height, float(diff.mean()))


try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False


@pytest.mark.skipif(not HAS_DALI, reason="DALI not installed (pip install nvidia-dali-cuda130)")
def test_dali_path_equals_the_pytorch_path(detailed_coco, pytorch_path):
    loader = build_loader(detailed_coco, "val", train=False, batch_size=4, num_workers=1, backend="dali")
    seen = set()
    for batch in loader:
        for image, image_id in zip(batch.images, batch.image_ids.tolist()):
            case = case_id(CASES[image_id - 1])
            diff = (image - pytorch_path[image_id]).abs()
            assert diff.mean() < MEAN_TOL, (case, float(diff.mean()))
            assert torch.quantile(diff.flatten(), 0.99) <= LEVEL, case
            assert diff[:, 1:-1, 1:-1].max() <= LEVEL, (case, float(diff[:, 1:-1, 1:-1].max()))  # border aside
            seen.add(image_id)
    assert seen == set(range(1, len(CASES) + 1))
