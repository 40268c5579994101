"""The GPU data path (--data-backend gpu) against the PyTorch path, on CPU tensors: same boxes and labels
exactly, pixels within one uint8 level, same unreadable files, same batches on a restart, same sharding."""

import io
import json

import cv2
import numpy as np
import pytest
import torch
import train  # tools/train.py (pyproject.toml puts tools/ on pytest's path)
from conftest import CUDA, tool, train_args
from PIL import Image

from ssdfast.data import CocoDetection, build_loader, read_image
from ssdfast.data import transforms as T
from ssdfast.data.draws import choose_crop, draw, jitter_factors
from ssdfast.data.gpu_pipeline import (
    GpuAugment,
    JpegSamples,
    augment,
    crop_resize,
    decode,
    orient,
)
from ssdfast.data.jpeg_header import read_jpeg_header

EPOCHS = (0, 3)
TOOL_THREADS = {"OMP_NUM_THREADS": "1"}  # the tools this file runs compute with one thread too: see one_thread


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Elementwise ops on 300x300 images: two intra-op threads on a busy 2-core CI machine are 10-100x
    slower than one (they wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def textured(rng, height, width) -> np.ndarray:
    """RGB uint8: blurred colour noise plus sharp rectangles (edges, texture and flat areas to resize)."""
    image = cv2.resize(
        rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    for _ in range(6):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        image[y : y + int(rng.integers(10, 40)), x : x + int(rng.integers(10, 40))] = rng.integers(0, 256, 3)
    return image


def encode(image: np.ndarray, kind: str) -> bytes:
    """An RGB image as the bytes of a file of `kind` (PIL writes the kinds OpenCV cannot)."""
    pil, out = Image.fromarray(image), io.BytesIO()
    if kind == "jpeg":
        return cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    if kind.startswith("exif"):
        exif = Image.Exif()
        exif[0x0112] = int(kind[4:])
        pil.save(out, "JPEG", quality=90, exif=exif.tobytes())
    elif kind in ("gray", "cmyk"):
        pil.convert({"gray": "L", "cmyk": "CMYK"}[kind]).save(out, "JPEG", quality=90)
    elif kind == "progressive":
        pil.save(out, "JPEG", quality=90, progressive=True)
    elif kind == "png":
        pil.save(out, "PNG")
    elif kind == "truncated":
        return encode(image, "jpeg")[:20000]
    return out.getvalue()


def write_dataset(root, kinds, seed=0, height=480, width=640):
    """A COCO-layout train split: one image file per kind (640x480 as COCO's), 2-5 boxes each."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, annotations = [], []
    for image_id, kind in enumerate(kinds, start=1):
        name = f"{image_id:04d}.{'png' if kind == 'png' else 'jpg'}"
        (root / "train2017" / name).write_bytes(encode(textured(rng, height, width), kind))
        h, w = (width, height) if kind in ("exif5", "exif6", "exif7", "exif8") else (height, width)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for _ in range(int(rng.integers(2, 6))):
            x, y = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "area": 1.0,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [x, y, rng.uniform(8, w - x), rng.uniform(8, h - y)],
                }
            )
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


@pytest.fixture(scope="module")
def coco_sized(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("coco_sized"), ["jpeg"] * 10)


ODD_KINDS = ["gray", "cmyk", "png", "progressive", "exif3", "exif6", "exif8", "truncated", "jpeg"]


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("odd_files"), ODD_KINDS, seed=1)


def pytorch_path(dataset: CocoDetection, epoch: int, index: int):
    """The PyTorch path's sample before colour jitter (its own functions, its own draws) and after."""
    record = dataset.records[index]
    image = read_image(dataset.image_dir / record.file_name)
    rng = np.random.default_rng([dataset.seed, epoch, index])
    crop = choose_crop(record.boxes, rng)
    cropped = image if crop is None else T.apply_crop(image, record.boxes.copy(), record.labels.copy(), crop)[0]
    if rng.random() < 0.5:
        cropped, _ = T.hflip(cropped, record.boxes)
    before = torch.from_numpy(T.resize(np.ascontiguousarray(cropped), 300)).permute(2, 0, 1)
    return before, dataset[(epoch, index)]


def gpu_path(samples: JpegSamples, epoch: int, index: int):
    """The GPU path's sample on CPU tensors: (before jitter, after jitter) uint8-valued, and its draws."""
    sample = samples[(epoch, index)]
    image = decode([sample], torch.device("cpu"))[0]
    resized = crop_resize(image, sample["draw"].window, 300)[None]
    flips = torch.tensor([sample["draw"].flip])
    before = augment(resized, flips, None)[0]
    after = augment(resized, flips, torch.tensor([sample["draw"].jitter], dtype=torch.float64))[0]
    return before, after, sample


def compare(dataset: CocoDetection, keys) -> dict:
    """Boxes/labels must be equal; returns the |difference| of the pixels before and after jitter."""
    samples, diffs = JpegSamples(dataset), {"before": [], "after": []}
    for epoch, index in keys:
        before, reference = pytorch_path(dataset, epoch, index)
        gpu_before, gpu_after, sample = gpu_path(samples, epoch, index)
        assert torch.equal(torch.from_numpy(sample["boxes"]), reference["boxes"]), (epoch, index)
        assert torch.equal(torch.from_numpy(sample["labels"]), reference["labels"]), (epoch, index)
        diffs["before"].append((gpu_before.float() - before.float()).abs().flatten())
        diffs["after"].append((gpu_after.float() - reference["image"].float()).abs().flatten())
    return {k: torch.cat(v) for k, v in diffs.items()}


def test_same_boxes_labels_and_pixels_as_pytorch_path(coco_sized):
    """COCO-sized JPEGs: boxes and labels exactly the PyTorch path's; pixels before jitter within one
    uint8 level (same decoder, same resize kernel; the flip after the resize instead of before);
    after jitter within one level almost everywhere (batched_color's docstring: where OpenCV's vector
    and scalar loops round differently, a nearly grey pixel's hue can move a few levels more)."""
    dataset = CocoDetection(coco_sized, "train")
    diffs = compare(dataset, [(epoch, index) for epoch in EPOCHS for index in range(len(dataset))])
    before, after = diffs["before"], diffs["after"]
    print(
        f"\nbefore jitter: mean {before.mean():.4f} max {before.max():.0f}; "
        f"after: mean {after.mean():.4f} max {after.max():.0f}, {(after > 1).float().mean():.2e} over 1"
    )
    assert before.max() <= 1 and before.mean() < 0.01
    assert after.mean() < 0.05 and (after > 1).float().mean() < 1e-3


def test_odd_files_decode_on_cpu_and_match(odd_files):
    """Grayscale, CMYK, PNG (OpenCV in the worker), progressive and EXIF-rotated JPEGs (the batched
    decoder, then orient) match the PyTorch path; the truncated file is unreadable in both."""
    dataset = CocoDetection(odd_files, "train")
    readable = [i for i, kind in enumerate(ODD_KINDS) if kind != "truncated"]
    samples = JpegSamples(dataset)
    assert "pixels" in samples[(0, ODD_KINDS.index("cmyk"))] and "jpeg" in samples[(0, ODD_KINDS.index("exif6"))]
    diffs = compare(dataset, [(epoch, index) for epoch in EPOCHS for index in readable])
    assert diffs["before"].max() <= 1 and diffs["after"].mean() < 0.05
    truncated = ODD_KINDS.index("truncated")
    assert samples[(0, truncated)] == dataset[(0, truncated)] == {"unreadable": str(dataset.image_dir / "0008.jpg")}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_like_opencv(orientation):
    """Each EXIF orientation: decode_jpeg + orient equals OpenCV's imdecode (which applies EXIF)."""
    raw = encode(textured(np.random.default_rng(orientation), 48, 64), f"exif{orientation}")
    header = read_jpeg_header(raw)
    assert header.orientation == orientation and (header.height, header.width, header.components) == (48, 64, 3)
    from torchvision.io import ImageReadMode, decode_jpeg

    ours = orient(decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB), orientation)
    opencv = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert ours.shape == (3, *opencv.shape[:2])
    assert (ours.permute(1, 2, 0).int() - torch.from_numpy(opencv).int()).abs().max() <= 1


def test_jpeg_header_matches_pil():
    """Size and components as PIL reads them; None for what is not a JPEG or is cut inside its header."""
    image = textured(np.random.default_rng(0), 48, 72)
    for kind, components in (("jpeg", 3), ("gray", 1), ("cmyk", 4), ("progressive", 3)):
        raw = encode(image, kind)
        pil = Image.open(io.BytesIO(raw))
        header = read_jpeg_header(raw)
        assert (header.width, header.height, header.components) == (*pil.size, components), kind
        assert components == len(pil.getbands())
    assert read_jpeg_header(encode(image, "png")) is None and read_jpeg_header(b"\xff\xd8\xff") is None


def draws(transform_draws: bool, seeds) -> dict:
    """Crop kept or not, crop area, flip and colour factors of many samples of one 640x480 image with 3
    boxes: from the generator's stream taken by hand in the documented order (choose_crop, the flip,
    jitter_factors), or from draws.draw."""
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.3, 0.6, 0.6, 0.95]], dtype=np.float32)
    labels = np.array([1, 2, 3])
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    out = {"uncropped": [], "area": [], "flip": [], "jitter": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if transform_draws:
            crop = choose_crop(boxes, rng)
            cropped = image if crop is None else T.apply_crop(image, boxes, labels, crop)[0]
            out["flip"].append(rng.random() < 0.5)
            out["jitter"].append(jitter_factors(rng))
            height, width = cropped.shape[:2]
        else:
            params = draw((seed, 0, 0), boxes)
            out["flip"].append(params.flip)
            out["jitter"].append(params.jitter)
            x0, y0, x1, y1 = T.crop_pixels(params.window, 480, 640)
            height, width = y1 - y0, x1 - x0
        out["uncropped"].append((height, width) == (480, 640))
        out["area"].append(height * width / (480 * 640))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def test_draw_statistics_match_pytorch_path():
    """2,000 draws each, on disjoint seeds: uncropped share, mean crop area, flip rate within 4 standard
    errors of the PyTorch path's; every colour factor inside torchvision ColorJitter's range, spanning it."""
    ours, theirs = draws(False, range(2000)), draws(True, range(2000, 4000))
    for key in ("uncropped", "area", "flip"):
        error = np.sqrt(ours[key].var() / 2000 + theirs[key].var() / 2000)
        assert abs(ours[key].mean() - theirs[key].mean()) < 4 * error, key
    assert abs(ours["flip"].mean() - 0.5) < 4 * np.sqrt(0.25 / 2000)
    for column, (low, high) in enumerate(((0.875, 1.125), (0.5, 1.5), (0.5, 1.5), (-9, 9))):
        for factors in (ours["jitter"][:, column], theirs["jitter"][:, column]):
            span = high - low
            assert low <= factors.min() < low + 0.02 * span and high - 0.02 * span < factors.max() <= high


def batches(loader):
    return [(b.image_ids.tolist(), b.images.clone(), b.boxes.clone(), b.skipped) for b in loader]


def test_restarted_epoch_replays_the_same_batches(coco_sized):
    loader = build_loader(coco_sized, "train", train=True, batch_size=3, num_workers=0, backend="gpu", seed=5)
    loader.set_epoch(2)
    whole = batches(loader)
    loader.set_epoch(2, start_batch=1)
    rest = batches(loader)
    assert len(whole) == len(loader) == 3 and len(rest) == 2
    for (ids, images, boxes, _), (ids2, images2, boxes2, _) in zip(whole[1:], rest):
        assert ids == ids2 and torch.equal(images, images2) and torch.equal(boxes, boxes2)
    loader.set_epoch(3)
    assert [b[0] for b in batches(loader)] != [b[0] for b in whole]  # a new epoch reshuffles


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_cover_the_epoch_once(coco_sized, train):
    ids = []
    for rank in (0, 1):
        loader = build_loader(
            coco_sized, "train", train=train, batch_size=5, num_workers=0, backend="gpu", rank=rank, world_size=2
        )
        loader.set_epoch(1)
        ids.append([i for b in loader for i in b.image_ids.tolist()])
    assert not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == list(range(1, 11))


def test_loader_batches_match_pytorch_loader(odd_files):
    """Whole batches through build_loader (2 workers): same ids, boxes, labels, unreadable files, and
    the images normalised as Batch.to normalises the PyTorch path's uint8 ones."""
    loaders = [
        build_loader(odd_files, "train", train=True, batch_size=4, num_workers=workers, backend=backend)
        for backend, workers in (("pytorch", 0), ("gpu", 2))
    ]
    for loader in loaders:
        loader.set_epoch(1)
    for theirs, ours in zip(*loaders):
        assert theirs.image_ids.tolist() == ours.image_ids.tolist() and theirs.skipped == ours.skipped
        assert torch.equal(theirs.boxes, ours.boxes) and torch.equal(theirs.labels, ours.labels)
        assert ours.images.dtype == torch.float32 and ours.images.is_contiguous(memory_format=torch.channels_last)
        assert (theirs.to("cpu").images - ours.images).abs().mean() < 0.05 / 255 / 0.225
    assert sum(len(b.skipped) for b in loaders[1]) == 1


@CUDA
@pytest.mark.cuda
def test_gpu_loader_on_cuda_matches_its_cpu_twin(odd_files):
    """The GPU path on CUDA (nvJPEG, side stream, double buffers) against the same code on CPU tensors: the
    same ids, boxes, labels and unreadable files; pixels close, in uint8 levels (nvJPEG's chroma upsampling and
    IDCT are not libjpeg's, and the CUDA resize rounds floats: the bound is loose, the numbers are printed)."""
    loaders = {
        device: build_loader(
            odd_files, "train", train=True, batch_size=4, num_workers=2, backend="gpu", device=device, seed=3
        )
        for device in ("cpu", "cuda")
    }
    for loader in loaders.values():
        loader.set_epoch(1)
    diffs = []
    for cpu, cuda in zip(loaders["cpu"], loaders["cuda"]):
        images = cuda.images.float().cpu()  # now: the next batch overwrites this buffer
        assert cpu.image_ids.tolist() == cuda.image_ids.tolist() and cpu.skipped == cuda.skipped
        assert torch.equal(cpu.boxes, cuda.boxes.cpu()) and torch.equal(cpu.labels, cuda.labels.cpu())
        std = torch.tensor(T.IMAGENET_STD).view(1, 3, 1, 1)
        diffs.append(((cpu.images - images).abs() * std * 255).flatten())
    levels = torch.cat(diffs)
    print(
        f"\nCUDA vs CPU: mean {levels.mean():.3f} levels, 99th percentile {levels.quantile(0.99):.2f}, max {levels.max():.1f}"
    )
    assert levels.mean() < 1.0 and levels.quantile(0.99) <= 4


@CUDA
@pytest.mark.cuda
def test_gpu_augment_makes_no_host_sync_after_decoding(coco_sized):
    """GpuAugment.assemble (crop, resize, flip, jitter, normalise: on the loader's side stream after it waited
    for the queued steps) under set_sync_debug_mode("error"): a host sync there would stall the host until the
    steps end, and the next batch would no longer be prepared while a step runs. The decode before it syncs on
    purpose (torchvision issue 9606)."""
    dataset = CocoDetection(coco_sized, "train")
    samples = [JpegSamples(dataset)[(0, index)] for index in range(4)]
    augment = GpuAugment(torch.device("cuda"), train=True, max_boxes=8)
    augment(samples)  # once before: the per-device constants are made (and copied) at the first batch
    decoded = augment.decode(samples)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = augment.assemble(*decoded)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.images.shape == (4, 3, 300, 300) and batch.images.is_cuda


def test_unknown_backend_is_refused(coco_sized):
    with pytest.raises(ValueError, match="unknown data backend 'gpus'"):
        build_loader(coco_sized, "train", train=True, batch_size=2, backend="gpus")


def test_tools_train_and_eval_on_the_gpu_backend(synthetic_coco, tmp_path):
    """--data-backend gpu end to end on CPU (train one short epoch, evaluate); --dali stays an alias."""
    result = tool(
        "train",
        *train_args(synthetic_coco, tmp_path, 1, "--iters-per-epoch", 2, "--eval-batches", 1, "--data-backend", "gpu"),
        env=TOOL_THREADS,
    )
    assert "gpu data" in result.stdout and (tmp_path / "last.pt").is_file()
    tool(
        "eval",
        "--data-path",
        synthetic_coco,
        "--weights",
        tmp_path / "last.pt",
        "--batch-size",
        4,
        "--num-workers",
        0,
        "--data-backend",
        "gpu",
        "--output",
        tmp_path / "d.json",
        env=TOOL_THREADS,
    )
    assert json.loads((tmp_path / "d.metrics.json").read_text())["images_evaluated"] == 8
    assert train.get_args(["--data-path", str(synthetic_coco), "--dali"]).data_backend == "dali"
