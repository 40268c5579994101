"""The DALI data path (--dali): the same Batch as the PyTorch path, from an NVIDIA DALI pipeline.

readers.coco (sharded by rank) -> random_bbox_crop (the SSD crop options) -> decoders.image_slice
("mixed" = nvJPEG on the GPU when device_id is set, "cpu" otherwise) -> bb_flip + mirror -> resize
(antialiased bilinear, PIL's filter, as the PyTorch path) ->
hsv / brightness_contrast -> crop_mirror_normalize (CHW or HWC = channels_last, fp32 or fp16).
With device_id=None the whole graph runs on the CPU (how CI tests it).

Differences from the PyTorch path, by design of DALI: its random stream is seeded once per run (not
per (epoch, index)), so a resumed run does not replay the same augmentations; and a corrupt image
stops the pipeline with DALI's error (the PyTorch path skips it) - check a dataset with the
PyTorch path first. Images whose header is unreadable or over the pixel cap never reach DALI:
build_loader leaves them out at load and counts them (CocoDetection.drop_images_with_bad_headers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .batch import Batch
from .transforms import IMAGENET_MEAN, IMAGENET_STD

INSTALL_HINT = (
    "the DALI data path needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
    "(CUDA 13; nvidia-dali-cuda120 for CUDA 12), or drop --dali to use the PyTorch data path"
)


def require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{INSTALL_HINT} ({error})") from error


def resize(images, size: int):
    """Resize to size x size with PIL's antialiased bilinear filter, as the PyTorch path (transforms.resize).

    DALI's defaults, spelled out so they cannot drift: linear interpolation, antialiasing on (shrinking
    widens the triangle filter with the scale, like PIL). uint8 out, rounded, as PIL's. Left difference
    from PIL: when shrinking, the outermost output row/column can differ by up to ~0.4 (normalised; 22
    uint8 levels on a checkerboard) because DALI extends the image at its border where PIL renormalises
    the cut filter; elsewhere within 1 uint8 level (tests/test_preprocessing.py).
    """
    from nvidia.dali import fn, types

    return fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)


def build_pipeline(
    ann_file: Path,
    image_dir: Path,
    category_ids: list[int],
    *,
    train: bool,
    batch_size: int,
    size: int = 300,
    device_id: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    num_threads: int = 2,
    fp16: bool = False,
    channels_last: bool = False,
):
    """A DALI pipeline whose outputs are images, boxes [n, 4] xyxy normalised, labels [n] (1..C),
    image ids [1] and original (height, width)."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed, prefetch_queue_depth=2
    )
    def ssd_pipeline():
        jpegs, boxes, labels, image_ids = fn.readers.coco(
            name="reader",
            file_root=str(image_dir),
            annotations_file=str(ann_file),
            ltrb=True,
            ratio=True,
            skip_empty=train,
            include_iscrowd=False,
            avoid_class_remapping=True,
            image_ids=True,
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=train,
            pad_last_batch=not train,
            seed=seed,
        )
        sizes = fn.peek_image_shape(jpegs)[0:2]  # original (height, width)
        # Our own category-id -> 1..C mapping, identical to the PyTorch path's.
        labels = fn.lookup_table(
            labels,
            keys=list(category_ids),
            values=list(range(1, len(category_ids) + 1)),
            default_value=0,
            dtype=types.INT32,
        )
        decoder = "mixed" if gpu else "cpu"
        if train:
            crop_begin, crop_size, boxes, labels = fn.random_bbox_crop(
                boxes,
                labels,
                aspect_ratio=[0.5, 2.0],
                thresholds=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9],
                scaling=[0.3, 1.0],
                bbox_layout="xyXY",
                allow_no_crop=True,
                num_attempts=50,
            )
            images = fn.decoders.image_slice(jpegs, crop_begin, crop_size, device=decoder, output_type=types.RGB)
            flip = fn.random.coin_flip(probability=0.5)
            boxes = fn.bb_flip(boxes, ltrb=True, horizontal=flip)
            images = resize(images, size)
            images = fn.hsv(
                images,
                hue=fn.random.uniform(range=[-18.0, 18.0]),  # 0.05 of the hue circle
                saturation=fn.random.uniform(range=[0.5, 1.5]),
            )
            images = fn.brightness_contrast(
                images, brightness=fn.random.uniform(range=[0.875, 1.125]), contrast=fn.random.uniform(range=[0.5, 1.5])
            )
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = resize(images, size)
            flip = 0
        images = fn.crop_mirror_normalize(
            images,
            mean=(IMAGENET_MEAN * 255).tolist(),
            std=(IMAGENET_STD * 255).tolist(),
            mirror=flip,
            dtype=types.FLOAT16 if fp16 else types.FLOAT,
            output_layout="HWC" if channels_last else "CHW",
        )
        # Pad to the largest count in the batch here; DaliLoader pads/truncates to the fixed G.
        boxes = fn.pad(boxes, axes=(0,), fill_value=0.0)
        labels = fn.pad(labels, axes=(0,), fill_value=0)
        if gpu:
            boxes, labels = boxes.gpu(), labels.gpu()
        return images, boxes, labels, image_ids, sizes

    return ssd_pipeline()


class DaliLoader:
    """Iterates Batches from a DALI pipeline; same interface as the PyTorch loader."""

    def __init__(
        self,
        ann_file: Path,
        image_dir: Path,
        *,
        train: bool,
        batch_size: int,
        max_boxes: int,
        device_id: int | None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_threads: int = 2,
        fp16: bool = False,
        channels_last: bool = False,
        size: int = 300,
    ):
        require_dali()
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        categories = json.loads(Path(ann_file).read_text())["categories"]
        self.category_ids = sorted(c["id"] for c in categories)
        self.max_boxes = max_boxes
        self.channels_last = channels_last
        self.start_batch = 0
        self.pipe = build_pipeline(
            ann_file,
            image_dir,
            self.category_ids,
            train=train,
            batch_size=batch_size,
            size=size,
            device_id=device_id,
            shard_id=rank,
            num_shards=world_size,
            seed=seed,
            num_threads=num_threads,
            fp16=fp16,
            channels_last=channels_last,
        )
        self.pipe.build()
        self.iterator = DALIGenericIterator(
            self.pipe,
            ["images", "boxes", "labels", "image_ids", "sizes"],
            reader_name="reader",
            auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """DALI's reader reshuffles by itself each epoch. A restarted run skips start_batch batches
        (read and dropped): it resumes at the right iteration, but DALI's shuffling and augmentation
        restart from its seed, so the skipped and the following batches are not the ones the
        interrupted run saw (unlike the PyTorch path, which replays them exactly)."""
        self.start_batch = start_batch

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self):
        for position, out in enumerate(self.iterator):
            if position < self.start_batch:
                continue
            data = out[0]
            images = data["images"]
            if self.channels_last:  # HWC from DALI -> an NCHW-shaped view in channels_last memory
                images = images.permute(0, 3, 1, 2)
            boxes, labels = data["boxes"], data["labels"].long()
            if labels.dim() == 3:
                labels = labels.squeeze(-1)
            count = boxes.shape[1]
            if count > self.max_boxes:
                boxes, labels = boxes[:, : self.max_boxes], labels[:, : self.max_boxes]
            elif count < self.max_boxes:
                boxes = torch.nn.functional.pad(boxes.reshape(len(boxes), count, 4), (0, 0, 0, self.max_boxes - count))
                labels = torch.nn.functional.pad(labels.reshape(len(labels), count), (0, self.max_boxes - count))
            yield Batch(
                images,
                boxes.float(),
                labels,
                data["image_ids"].reshape(-1).long().cpu(),
                data["sizes"].reshape(-1, 2).long().cpu(),
            )
