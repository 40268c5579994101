"""Data: augmentation invariants, label mapping, both data paths, DDP sharding, bad data."""

import json

import cv2
import numpy as np
import pytest
import torch

from ssdfast.data import CocoDetection, Collate, build_loader, read_image
from ssdfast.data import transforms as T
from ssdfast.data.batch import pad_targets
from ssdfast.data.dali import DaliSamples, dali_inputs
from ssdfast.data.draws import NO_AUGMENTATION, choose_crop
from ssdfast.data.gpu_pipeline import JpegSamples
from ssdfast.data.transforms import SSDTransform, hflip, normalise


def coordinate_image(height=200, width=250):
    """R = column, G = row: a crop reveals its own window."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8)


def random_crop(image, boxes, labels, rng):
    """The PyTorch path's crop as the draw makes it from `rng` (draws.choose_crop), cut (transforms.apply_crop)."""
    crop = choose_crop(boxes, rng)
    return (image, boxes, labels) if crop is None else T.apply_crop(image, boxes, labels, crop)


def random_boxes_np(rng, n):
    xy = rng.uniform(0, 0.8, size=(n, 2))
    wh = rng.uniform(0.02, 0.5, size=(n, 2))
    return np.clip(np.concatenate([xy, xy + wh], 1), 0, 1).astype(np.float32)


def test_random_crop_keeps_exactly_the_boxes_centred_inside():
    rng = np.random.default_rng(0)
    image = coordinate_image()
    H, W = image.shape[:2]
    cropped_some = False
    for _ in range(300):
        boxes = random_boxes_np(rng, 6)
        labels = np.arange(1, 7)
        crop, kept, kept_labels = random_crop(image, boxes.copy(), labels, rng)
        assert ((kept >= 0) & (kept <= 1)).all() and (kept[:, 2] > kept[:, 0]).all() and (kept[:, 3] > kept[:, 1]).all()
        if crop.shape == image.shape:
            assert np.array_equal(kept, boxes)
            continue
        cropped_some = True
        left, top, h, w = int(crop[0, 0, 0]), int(crop[0, 0, 1]), crop.shape[0], crop.shape[1]
        window = np.array([left / W, top / H, (left + w) / W, (top + h) / H])
        slack = 1.5 / min(H, W)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        surely_in = (
            (cx > window[0] + slack) & (cx < window[2] - slack) & (cy > window[1] + slack) & (cy < window[3] - slack)
        )
        surely_out = (
            (cx < window[0] - slack) | (cx > window[2] + slack) | (cy < window[1] - slack) | (cy > window[3] + slack)
        )
        assert set(labels[surely_in]) <= set(kept_labels) and not set(labels[surely_out]) & set(kept_labels)
        for box, label in zip(kept, kept_labels):  # clipped to the window, re-normalised
            orig = np.clip(boxes[label - 1], window[[0, 1, 0, 1]], window[[2, 3, 2, 3]])
            expected = (orig - window[[0, 1, 0, 1]]) / (window[[2, 3, 2, 3]] - window[[0, 1, 0, 1]])
            np.testing.assert_allclose(box, expected, atol=0.02)
    assert cropped_some


def test_flip_twice_is_identity_and_moves_boxes():
    rng = np.random.default_rng(1)
    image, boxes = coordinate_image(), random_boxes_np(rng, 5)
    once_img, once = hflip(image, boxes)
    assert np.allclose(once[:, 0], 1 - boxes[:, 2]) and np.array_equal(once_img[:, 0], image[:, -1])
    twice_img, twice = hflip(once_img, once)
    assert np.array_equal(twice_img, image) and np.allclose(twice, boxes)


def test_eval_transform_preserves_box_geometry():
    image = np.zeros((240, 320, 3), np.uint8)
    image[60:180, 80:160] = 255  # a white box at x 80-160, y 60-180
    box = np.array([[80 / 320, 60 / 240, 160 / 320, 180 / 240]], np.float32)
    tensor, boxes, labels = SSDTransform()(image, box, np.array([1]))
    assert tensor.shape == (3, 300, 300) and torch.equal(boxes, torch.from_numpy(box))
    white = (tensor[0] > 1.5).nonzero()
    y1, x1, y2, x2 = white[:, 0].min(), white[:, 1].min(), white[:, 0].max() + 1, white[:, 1].max() + 1
    np.testing.assert_allclose(np.array([x1, y1, x2, y2]) / 300, box[0], atol=2 / 300)


def test_training_samples_are_valid_and_reproducible(synthetic_coco):
    data = CocoDetection(synthetic_coco, "train", seed=3)
    for i in range(len(data)):
        s = data[i]
        assert s["image"].shape == (3, 300, 300) and s["image"].dtype == torch.uint8  # normalised on the device
        b = s["boxes"]
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(b) == len(s["labels"]) >= 1
    data.set_epoch(1)
    again = CocoDetection(synthetic_coco, "train", seed=3)
    again.set_epoch(1)
    assert torch.equal(data[5]["image"], again[5]["image"])
    again.set_epoch(2)
    assert not torch.equal(data[5]["image"], again[5]["image"])


def write_annotations(root, split, images, annotations, categories):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    for img in images:
        cv2.imwrite(
            str(root / f"{split}2017" / img["file_name"]), np.full((img["height"], img["width"], 3), 128, np.uint8)
        )


def test_label_mapping_crowd_degenerate_and_empty_images(tmp_path):
    cats = [{"id": 90, "name": "z"}, {"id": 2, "name": "a"}, {"id": 17, "name": "m"}]  # gaps, unsorted
    images = [
        {"id": 7, "file_name": "7.jpg", "height": 100, "width": 200},
        {"id": 3, "file_name": "3.jpg", "height": 50, "width": 50},
    ]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 17, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [150, 50, 100, 100], "iscrowd": 0},  # clipped
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: dropped
        {"id": 4, "image_id": 7, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width: dropped
        {"id": 5, "image_id": 7, "category_id": 2, "bbox": [300, 5, 10, 10], "iscrowd": 0},  # outside: dropped
    ]
    write_annotations(tmp_path, "train", images, anns, cats)
    train = CocoDetection(tmp_path, "train")
    assert train.category_ids == [2, 17, 90] and train.category_names == ["a", "m", "z"]
    assert [r.image_id for r in train.records] == [7]  # image 3 has no boxes: skipped for training
    rec = train.records[0]
    assert rec.labels.tolist() == [2, 3]
    np.testing.assert_allclose(rec.boxes, [[0.05, 0.2, 0.2, 0.6], [0.75, 0.5, 1.0, 1.0]], atol=1e-6)
    evaluation = CocoDetection(tmp_path, "train", train=False)
    assert [r.image_id for r in evaluation.records] == [3, 7]  # evaluation keeps every image
    sample = evaluation[0]
    assert sample["image_id"] == 3 and sample["size"] == (50, 50) and len(sample["boxes"]) == 0


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoDetection(tmp_path, "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="val2017"):
        CocoDetection(tmp_path, "val")
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse COCO annotation file"):
        CocoDetection(tmp_path, "val")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in range(1, 6)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 30], "iscrowd": 0} for i in range(1, 6)]
    write_annotations(tmp_path, "train", images, anns, [{"id": 1, "name": "thing"}])
    folder = tmp_path / "train2017"
    good = (folder / "1.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(b"")  # zero bytes
    (folder / "3.jpg").write_bytes(b"this is not an image")
    (folder / "4.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (folder / "5.jpg").unlink()  # missing
    for name in ["2.jpg", "3.jpg", "4.jpg", "5.jpg"]:
        assert read_image(folder / name) is None
    data = CocoDetection(tmp_path, "train")
    assert data.dropped["missing image files"] == 1 and len(data) == 4  # found once, at load
    samples = [data[i] for i in range(4)]
    batch = Collate(max_boxes=4)(samples)
    assert len(batch.skipped) == 3 and batch.images.shape[0] == 4  # training keeps the batch size
    assert torch.equal(batch.images[1], batch.images[0])
    eval_batch = Collate(max_boxes=4, keep_batch_size=False)(samples)
    assert eval_batch.images.shape[0] == 1 and eval_batch.image_ids.tolist() == [1]


def test_grayscale_cmyk_png_and_exif_rotation(tmp_path):
    from PIL import Image

    gray = np.tile(np.arange(64, dtype=np.uint8), (32, 1))
    cv2.imwrite(str(tmp_path / "gray.jpg"), gray)
    img = read_image(tmp_path / "gray.jpg")
    assert img.shape == (32, 64, 3) and abs(int(img[0, 40, 0]) - 40) <= 3

    Image.new("CMYK", (40, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # CMYK red
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.shape == (20, 40, 3) and img[10, 20, 0] > 200 and img[10, 20, 1] < 60

    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., 1] = 200  # BGR(A): green
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    img = read_image(tmp_path / "alpha.png")
    assert img.shape == (16, 24, 3) and img[0, 0, 1] == 200

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif)
    img = read_image(tmp_path / "rotated.jpg")
    assert img.shape == (40, 20, 3)  # displayed upright: portrait
    assert img[5, 10].mean() > 200 and img[35, 10].mean() < 50  # the white half is now on top


def test_too_many_boxes_are_truncated_with_a_warning():
    with pytest.warns(UserWarning, match="only the first 3"):
        boxes, labels = pad_targets([torch.rand(5, 4), torch.rand(1, 4)], [torch.ones(5), torch.ones(1)], 3)
    assert boxes.shape == (2, 3, 4) and labels.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_ddp_shards_are_disjoint_and_cover_the_set(synthetic_coco):
    def ids(rank, train):
        loader = build_loader(
            synthetic_coco,
            "train" if train else "val",
            train=train,
            batch_size=2,
            num_workers=0,
            rank=rank,
            world_size=2,
            seed=0,
        )
        loader.set_epoch(0)
        return [i for batch in loader for i in batch.image_ids.tolist()], loader.info.num_images

    (a, n), (b, _) = ids(0, True), ids(1, True)
    assert not set(a) & set(b) and len(set(a) | set(b)) == n == 24
    (a, n), (b, _) = ids(0, False), ids(1, False)
    assert not set(a) & set(b) and sorted(a + b) == sorted(set(a + b)) and len(a + b) == n == 8


try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="DALI not installed (pip install nvidia-dali-cuda130)")


@needs_dali
def test_dali_and_pytorch_paths_agree(synthetic_coco):
    torch_loader = build_loader(synthetic_coco, "val", train=False, batch_size=4, num_workers=0)
    dali_loader = build_loader(synthetic_coco, "val", train=False, batch_size=4, num_workers=1, backend="dali")
    torch_batches, dali_batches = list(torch_loader), list(dali_loader)
    assert len(torch_batches) == len(dali_batches) == 2
    by_id = {}
    for batch in torch_batches:
        for i, image_id in enumerate(batch.image_ids.tolist()):
            by_id[image_id] = (normalise(batch.images[i]), batch.boxes[i], batch.labels[i], batch.sizes[i])
    for batch in dali_batches:
        assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (3, 300, 300)
        assert batch.boxes.shape == (4, 128, 4) and batch.labels.dtype == torch.int64
        for i, image_id in enumerate(batch.image_ids.tolist()):
            image, boxes, labels, size = by_id[image_id]
            assert torch.equal(batch.labels[i], labels) and torch.equal(batch.sizes[i], size)
            torch.testing.assert_close(batch.boxes[i], boxes, rtol=0, atol=1e-5)
            # The same resize filter (PIL's antialiased bilinear; tests/test_preprocessing.py); left:
            # JPEG decoders' and the two fixed-point resize kernels' rounding (measured: <= 0.0033).
            assert (batch.images[i] - image).abs().mean() < 0.01


@needs_dali
def test_both_paths_describe_the_dataset_the_same_way(synthetic_coco, tmp_path):
    """One DatasetInfo for both paths, and the images they read agree, also when images are dropped."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_coco, root)
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        if a["image_id"] == data["images"][0]["id"]:
            a["iscrowd"] = 1  # an image left with only crowd boxes: not read for training
    ann.write_text(json.dumps(data))
    (root / "train2017" / data["images"][1]["file_name"]).unlink()  # a missing file: left out
    paths = {
        dali: build_loader(
            root, "train", train=True, batch_size=2, num_workers=1, backend="dali" if dali else "pytorch"
        )
        for dali in (0, 1)
    }
    torch_info, dali_info = paths[0].info, paths[1].info
    assert torch_info.num_images == dali_info.num_images == 22
    assert torch_info.dropped == dali_info.dropped and torch_info.dropped["missing image files"] == 1
    assert torch_info.category_names == dali_info.category_names
    seen = {dali: sorted(i for batch in loader for i in batch.image_ids.tolist()) for dali, loader in paths.items()}
    assert seen[0] == seen[1] and len(seen[0]) == 22


@needs_dali
def test_dali_training_batches_are_valid(synthetic_coco):
    loader = build_loader(
        synthetic_coco, "train", train=True, batch_size=4, num_workers=1, backend="dali", channels_last=True
    )
    batches = list(loader)
    assert len(batches) == 24 // 4
    for batch in batches:
        assert batch.images.shape == (4, 3, 300, 300) and batch.images.is_contiguous(memory_format=torch.channels_last)
        real = batch.labels > 0
        assert real.any(dim=1).all() and (batch.labels <= 3).all()
        b = batch.boxes[real]
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert -3 < batch.images.mean() < 3


def test_persistent_workers_still_change_the_augmentation_every_epoch(synthetic_coco):
    """Workers start once (persistent_workers) and keep their own copy of the dataset, which never sees
    set_epoch: the epoch reaches them with every index. Each epoch's batches must equal those of a
    loader without workers (the same keys), and differ from the previous epoch's."""

    def epochs(num_workers):
        loader = build_loader(synthetic_coco, "train", train=True, batch_size=4, num_workers=num_workers, seed=3)
        out = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            out.append([(b.images.clone(), b.boxes.clone(), b.image_ids.clone()) for b in loader])
        return loader, out

    loader, with_workers = epochs(2)
    assert loader.loader.persistent_workers
    _, without_workers = epochs(0)
    for epoch in range(2):
        for (img, box, ids), (img0, box0, ids0) in zip(with_workers[epoch], without_workers[epoch]):
            assert torch.equal(ids, ids0) and torch.equal(img, img0) and torch.equal(box, box0)
    first, second = with_workers
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restarted_epoch_replays_the_rest_of_the_same_epoch(synthetic_coco, num_workers):
    """set_epoch(epoch, start_batch=k): the batches k.. of that epoch, image for image and pixel for pixel
    (same order, same augmentation draws), with persistent workers too; len() stays the whole epoch."""
    loader = build_loader(synthetic_coco, "train", train=True, batch_size=4, num_workers=num_workers, seed=3)
    loader.set_epoch(1)
    full = [(b.images.clone(), b.image_ids.clone()) for b in loader]
    loader.set_epoch(1, start_batch=2)
    rest = [(b.images.clone(), b.image_ids.clone()) for b in loader]
    assert len(loader) == len(full) == 6 and len(rest) == 4
    for (img, ids), (img0, ids0) in zip(rest, full[2:]):
        assert torch.equal(ids, ids0) and torch.equal(img, img0)
    loader.set_epoch(1)  # and the next full pass is whole again
    assert len(list(loader)) == 6


@needs_dali
def test_dali_restart_replays_the_rest_of_the_same_epoch(synthetic_coco):
    """The DALI path is keyed like the others: a restarted epoch gives the same batches, pixel for pixel."""
    loader = build_loader(synthetic_coco, "train", train=True, batch_size=4, num_workers=1, backend="dali", seed=3)
    loader.set_epoch(1)
    full = [(b.images.clone(), b.image_ids.clone(), b.boxes.clone()) for b in loader]
    loader.set_epoch(1, start_batch=4)
    rest = [(b.images.clone(), b.image_ids.clone(), b.boxes.clone()) for b in loader]
    assert len(loader) == len(full) == 6 and len(rest) == 2
    for (images, ids, boxes), (images0, ids0, boxes0) in zip(rest, full[4:]):
        assert torch.equal(ids, ids0) and torch.equal(images, images0) and torch.equal(boxes, boxes0)
    loader.set_epoch(1, start_batch=len(loader))  # stopped after the epoch's last step: nothing left, no error
    assert list(loader) == []
    loader.set_epoch(2)
    assert [b.image_ids.tolist() for b in loader] != [ids.tolist() for _, ids, _ in full]  # a new epoch reshuffles


@needs_dali
def test_dali_training_draws_equal_the_pytorch_paths(synthetic_coco):
    """For the same (seed, epoch): the same images in the same batches, the same boxes and labels (the same
    crop, flip and colour draws), and before the colour jitter the same pixels up to the resize kernels'
    rounding (DALI's jitter is its own arithmetic on the same factors)."""
    dali_loader = build_loader(synthetic_coco, "train", train=True, batch_size=4, num_workers=1, backend="dali", seed=7)
    torch_loader = build_loader(synthetic_coco, "train", train=True, batch_size=4, num_workers=0, seed=7)
    dali_loader.jitter = False
    for loader in (dali_loader, torch_loader):
        loader.set_epoch(2)
    dataset, levels = torch_loader.dataset, []
    for ours, theirs in zip(dali_loader, torch_loader):
        assert ours.image_ids.tolist() == theirs.image_ids.tolist()
        assert torch.equal(ours.boxes, theirs.boxes) and torch.equal(ours.labels, theirs.labels)
        for image, image_id in zip(ours.images, ours.image_ids.tolist()):
            index = next(i for i, r in enumerate(dataset.records) if r.image_id == image_id)
            record = dataset.records[index]
            rng = np.random.default_rng([7, 2, index])
            picture = read_image(dataset.image_dir / record.file_name)
            cropped, _, _ = random_crop(picture, record.boxes.copy(), record.labels.copy(), rng)
            if rng.random() < 0.5:
                cropped, _ = T.hflip(cropped, record.boxes)
            before = torch.from_numpy(T.resize(np.ascontiguousarray(cropped), 300)).permute(2, 0, 1)
            std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
            levels.append(((image - normalise(before)).abs() * std * 255).flatten())
    levels = torch.cat(levels)
    print(f"\nDALI vs PyTorch before jitter: mean {levels.mean():.3f} levels, max {levels.max():.1f}")
    assert levels.mean() < 0.5 and levels.quantile(0.99) <= 2
    # With the jitter: the same factors through DALI's own arithmetic (contrast about mid-grey): measured 7.4
    # levels apart on average; factors swapped or hue in the wrong unit came out 51 apart.
    dali_loader.jitter = True
    for loader in (dali_loader, torch_loader):
        loader.set_epoch(2)
    std = torch.tensor(T.IMAGENET_STD).view(1, 3, 1, 1)
    jittered = torch.cat(
        [
            ((ours.images - theirs.to("cpu").images).abs() * std * 255).flatten()
            for ours, theirs in zip(dali_loader, torch_loader)
        ]
    )
    print(f"DALI vs PyTorch with jitter: mean {jittered.mean():.2f} levels")
    assert jittered.mean() < 15


def test_the_three_paths_draw_the_same_parameters(synthetic_coco):
    """For 72 keys (seed, epoch, index): the Draw the PyTorch path's transform receives (CocoDetection),
    the one the GPU path's workers ship (JpegSamples) and the one the DALI path's workers ship
    (DaliSamples), with the DALI inputs made of it (dali_inputs), are one and the same, as are the boxes
    and labels; and it is the generator's stream of that key taken in the documented order (draws.py)."""
    dataset = CocoDetection(synthetic_coco, "train", seed=5)
    received = []  # what SSDTransform is called with, in order
    apply = dataset.transform
    dataset.transform = lambda image, boxes, labels, params: apply(
        image, boxes, labels, received.append(params) or params
    )
    gpu_samples, dali_samples = JpegSamples(dataset), DaliSamples(dataset)
    seen = []
    for epoch in (0, 1, 7):
        for index in range(len(dataset)):
            key = (epoch, index)
            pytorch_sample = dataset[key]
            pytorch_draw = received[-1]
            gpu = gpu_samples[key]
            dali = dali_inputs([dali_samples[key]])[0]
            assert pytorch_draw == gpu["draw"] == dali["draw"], key
            for sample in (gpu, dali):
                assert np.array_equal(sample["boxes"], pytorch_sample["boxes"].numpy()), key
                assert np.array_equal(sample["labels"], pytorch_sample["labels"].numpy()), key
            # DALI's inputs carry exactly that draw: the crop's pixel window, the flip, the factors in its units.
            record = dataset.records[index]
            x0, y0, x1, y1 = T.crop_pixels(pytorch_draw.window, record.height, record.width)
            assert dali["anchor"].tolist() == [x0, y0] and dali["shape"].tolist() == [x1 - x0, y1 - y0], key
            assert dali["flip"] == pytorch_draw.flip and dali["hue"] == 2 * pytorch_draw.hue_shift
            factors = (dali["brightness"], dali["contrast"], dali["saturation"])
            assert factors == tuple(np.float32(f) for f in pytorch_draw.jitter[:3]), key
            # The stream of the key, by hand: crop (option and windows), flip, brightness, contrast, saturation, hue.
            rng = np.random.default_rng([5, epoch, index])
            crop = choose_crop(record.boxes, rng)
            flip = rng.random() < 0.5
            b, c, s, h = (
                rng.uniform(0.875, 1.125),
                rng.uniform(0.5, 1.5),
                rng.uniform(0.5, 1.5),
                rng.uniform(-0.05, 0.05),
            )
            assert (pytorch_draw.crop is None) == (crop is None), key
            assert crop is None or np.array_equal(pytorch_draw.window, crop), key
            assert (pytorch_draw.flip, pytorch_draw.jitter) == (flip, (b, c, s, round(h * 180))), key
            seen.append(pytorch_draw)
    # Draws that differ from key to key (a path ignoring the key, or not drawing, would give one draw).
    assert len(set(seen)) == len(seen) == 72
    assert 10 < sum(d.flip for d in seen) < 62 and 0 < sum(d.crop is None for d in seen) < 72
    evaluation = CocoDetection(synthetic_coco, "val", seed=5)
    assert {JpegSamples(evaluation)[(1, i)]["draw"] for i in range(len(evaluation))} == {NO_AUGMENTATION}
