"""The GPU data path (--data-backend gpu): CPU workers do only cheap work, the device does the pixels.

Workers (JpegSamples, in a torch DataLoader): read a file's bytes and take the sample's Draw from its
(seed, epoch, index) key (draws.draw, as the PyTorch path does), and its boxes and labels
(transforms.augment_boxes), so they equal the PyTorch path's. They ship the JPEG bytes and the Draw
(crop window, flip, colour factors): the bytes plus ~180 bytes per image.
Files the batched decoder should not see (grayscale, CMYK, PNG, arithmetic-coded, truncated) are decoded
by the worker with the PyTorch path's read_image instead, and shipped as pixels.

The loader process (GpuAugment): one batched torchvision.io.decode_jpeg (nvJPEG on CUDA, libjpeg on
CPU), EXIF orientation, crop, antialiased bilinear resize (torchvision's, as transforms.resize), flip,
colour jitter (batched_color: OpenCV's uint8 arithmetic as tensor ops), ImageNet normalisation into a
channels_last float buffer. The same code runs on CPU tensors: the test oracle and the CPU fallback.
On CUDA the work runs on a side stream, double-buffered: batch i+1 is prepared while step i runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ssdfast.data import batched_color
from ssdfast.data.batch import Batch, pad_targets, split_unreadable, with_copies
from ssdfast.data.coco import CocoDetection, read_image
from ssdfast.data.dataset_files import UnusableFile
from ssdfast.data.draws import draw
from ssdfast.data.image_files import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, image_bytes
from ssdfast.data.jpeg_header import TRANSPOSED, read_jpeg_header
from ssdfast.data.sampler import EpochKeyedSampler
from ssdfast.data.torch_loader import TorchLoader
from ssdfast.data.transforms import augment_boxes, crop_pixels, normalise
from ssdfast.machinery.preemption import ignore_stop_signals_in_workers


def read_payload(path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> dict:
    """What a worker ships of an image file: {"jpeg": bytes [N] uint8, "orientation": EXIF 1..8,
    "displayed_size": (H, W) after it} for a complete colour JPEG, {"pixels": [3, H, W] uint8} for anything else OpenCV reads (read_image), or
    {"unreadable": path}, also for a header that claims more than max_pixels (never decoded). NumPy arrays,
    not tensors: they are pickled through the worker's pipe, where each tensor would hold a shared-memory
    file descriptor in the main process until freed (thousands with 14 workers of batch 128)."""
    try:
        raw = image_bytes(path, max_pixels, max_bytes)  # size and header checked before the rest is read
    except (OSError, UnusableFile):
        return {"unreadable": str(path)}
    header = read_jpeg_header(raw)
    if header and header.width * header.height > max_pixels:
        return {"unreadable": str(path)}
    if header and header.components == 3 and header.huffman and raw.rfind(b"\xff\xd9") > raw.rfind(b"\xff\xda"):
        return {
            "jpeg": np.frombuffer(bytearray(raw), dtype=np.uint8),
            "orientation": header.orientation,
            "displayed_size": header.displayed_size,
        }
    image = read_image(path, max_pixels, max_bytes)
    if image is None:
        return {"unreadable": str(path)}
    return {"pixels": np.ascontiguousarray(image.transpose(2, 0, 1))}


class JpegSamples(Dataset):
    """The worker side: key (epoch, index) of a CocoDetection -> read_payload | {"draw": the sample's Draw,
    "boxes" [n, 4], "labels" [n] as the draw leaves them, "path", "image_id", "size": (h, w)}.
    Unreadable files: {"unreadable": path}."""

    def __init__(self, dataset: CocoDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        record = self.dataset.records[index]
        path = self.dataset.image_dir / record.file_name
        payload = read_payload(path, self.dataset.max_pixels, self.dataset.max_image_bytes)
        if "unreadable" in payload:
            return payload
        params = draw((self.dataset.seed, epoch, index), record.boxes, self.dataset.train)
        boxes, labels = augment_boxes(params, record.boxes.copy(), record.labels.copy())
        return {
            **payload,
            "draw": params,
            "boxes": boxes,
            "labels": labels,
            "path": str(path),
            "image_id": record.image_id,
            "size": (record.height, record.width),
        }


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[3, H, W] as stored -> as displayed, for EXIF orientation 1..8 (what OpenCV's imread applies)."""
    if orientation in TRANSPOSED:
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image


def decode(samples: list[dict], device: torch.device) -> list[torch.Tensor | None]:
    """Each sample's image [3, H, W] uint8 on `device` (oriented), None where it cannot be read. The JPEGs
    go through one batched decode_jpeg; if it fails, one by one, then OpenCV (read_image) for the rest."""
    jpegs = [i for i, s in enumerate(samples) if "jpeg" in s]
    images: list[torch.Tensor | None] = [
        torch.from_numpy(s["pixels"]).to(device, non_blocking=True) if "pixels" in s else None for s in samples
    ]
    if jpegs:
        data = [torch.from_numpy(samples[i]["jpeg"]) for i in jpegs]
        for i, image in zip(jpegs, decode_jpegs(data, device)):
            images[i] = (
                orient(image, samples[i]["orientation"])
                if image is not None
                else fallback_decode(samples[i]["path"], device)
            )
    return images


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """decode_jpeg on a list (nvJPEG's batched decode on CUDA), or image by image when the batch fails."""
    if device.type == "cuda":
        # torchvision issue 9606: nvJPEG may write outputs before earlier work on this stream has read the
        # memory the allocator recycled for them. Waiting for the stream first closes that window.
        torch.cuda.current_stream(device).synchronize()
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [decode_one(d, device) for d in data]


def decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def fallback_decode(path: str, device: torch.device) -> torch.Tensor | None:
    """OpenCV's decode of a JPEG the JPEG decoder refused (oriented already), or None."""
    image = read_image(path)
    return None if image is None else torch.from_numpy(image).permute(2, 0, 1).to(device)


def crop_resize(image: torch.Tensor, crop: np.ndarray, size: int) -> torch.Tensor:
    """[3, H, W] uint8 -> the crop window (crop_pixels, as the PyTorch path) resized to [3, size, size]
    with the antialiased bilinear filter of transforms.resize (native uint8 on CPU, float + round on CUDA)."""
    x0, y0, x1, y1 = crop_pixels(crop, image.shape[1], image.shape[2])
    return TF.resize(image[:, y0:y1, x0:x1], [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def augment(images: torch.Tensor, flips: torch.Tensor, jitter: torch.Tensor | None) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> flipped where flips [B] (after the resize: PIL's filter is mirror-symmetric
    to within a level) and colour-jittered with per-image factors [B, 4] (None: no jitter)."""
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    return images if jitter is None else batched_color.color_jitter(images, jitter)


def batch_of(images: torch.Tensor, samples: list[dict], max_boxes: int, skipped: tuple[str, ...]) -> Batch:
    """A Batch of `images` [B, 3, S, S] (on their device) and the samples' boxes, labels (padded to max_boxes,
    brought to that device), image ids and sizes."""
    boxes, labels = pad_targets(
        [torch.from_numpy(np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)) for s in samples],
        [torch.from_numpy(np.asarray(s["labels"], dtype=np.int64)) for s in samples],
        max_boxes,
    )
    return Batch(
        images,
        boxes.to(images.device, non_blocking=True),
        labels.to(images.device, non_blocking=True),
        torch.tensor([s["image_id"] for s in samples], dtype=torch.long),
        torch.tensor([s["size"] for s in samples], dtype=torch.long),
        skipped,
    )


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device` without a host sync (pinned memory, asynchronous copy on CUDA)."""
    return values.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else values


class GpuAugment:
    """Samples of JpegSamples -> a Batch on `device`: images ImageNet-normalised float32, channels_last,
    written into `out` when given (the loader's preallocated buffers on CUDA). Unreadable images are left
    out and listed in Batch.skipped; for training (`keep_batch_size`) replaced by copies of readable ones,
    as the PyTorch path's Collate does."""

    def __init__(self, device, train: bool, max_boxes: int, size: int = 300):
        self.device, self.train, self.max_boxes, self.size = torch.device(device), train, max_boxes, size

    def __call__(self, samples: list[dict], out: torch.Tensor | None = None) -> Batch:
        return self.assemble(*self.decode(samples), out=out)

    def decode(self, samples: list[dict]) -> tuple[list[tuple[dict, torch.Tensor]], tuple[str, ...]]:
        """(readable samples with their decoded image, paths of the unreadable ones)."""
        readable, skipped = split_unreadable(samples)
        images = decode(readable, self.device)
        skipped += tuple(s["path"] for s, image in zip(readable, images) if image is None)
        return [(s, image) for s, image in zip(readable, images) if image is not None], skipped

    def assemble(
        self, good: list[tuple[dict, torch.Tensor]], skipped: tuple[str, ...], out: torch.Tensor | None = None
    ) -> Batch:
        if not good:  # the whole batch was unreadable: an empty batch, which the engine passes over
            return Batch.empty(self.max_boxes, skipped)
        if self.train:
            good = with_copies(good, len(skipped))
        kept = [s for s, _ in good]
        return batch_of(self.pixels([image for _, image in good], kept, out), kept, self.max_boxes, skipped)

    def pixels(self, images: list[torch.Tensor], samples: list[dict], out: torch.Tensor | None) -> torch.Tensor:
        """Decoded images -> [B, 3, S, S] normalised float32, channels_last (into out[:B] when given)."""
        resized = torch.stack([crop_resize(image, s["draw"].window, self.size) for image, s in zip(images, samples)])
        # Per-image parameters cross from pinned memory without waiting: this runs on the side stream after
        # it waited for the steps, where a synchronous copy would stall the host until they finish.
        flips = to_device(torch.tensor([s["draw"].flip for s in samples]), self.device)
        jitter = to_device(torch.tensor([s["draw"].jitter for s in samples], dtype=torch.float64), self.device)
        normalised = normalise(augment(resized, flips, jitter if self.train else None))
        if out is None:
            out = torch.empty_like(normalised, memory_format=torch.channels_last)
        return out[: len(images)].copy_(normalised)


class GpuLoader(TorchLoader):
    """The GPU data path's Loader: a DataLoader of JpegSamples (the PyTorch path's sampler, so the same
    sharding, shuffling, (seed, epoch, index) keying and mid-epoch restart) feeding GpuAugment.

    On CUDA, GpuAugment runs on a side stream into two preallocated buffers used in turn: batch i+1 is
    decoded and augmented while the step on batch i runs. A batch's images are overwritten once the
    next batch is taken (work already queued on them is safe; keep a copy to hold them longer)."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader, augment: GpuAugment):
        super().__init__(dataset, loader)  # set_epoch and __len__ as the PyTorch path's
        self.augment = augment
        cuda = augment.device.type == "cuda"
        self.stream = torch.cuda.Stream(augment.device) if cuda else None
        shape = (loader.batch_size, 3, augment.size, augment.size)
        self.buffers = (
            [torch.empty(shape, device=augment.device, memory_format=torch.channels_last) for _ in range(2)]
            if cuda
            else [None, None]
        )

    def __iter__(self):
        if self.stream is None:
            yield from (self.augment(samples) for samples in self.loader)
            return
        ready = None  # (batch, event) prepared and not handed out yet
        for position, samples in enumerate(self.loader):
            prepared = self.prepare(samples, self.buffers[position % 2])
            if ready is not None:
                yield self.hand_over(*ready)
            ready = prepared
        if ready is not None:
            yield self.hand_over(*ready)

    def prepare(self, samples: list[dict], buffer: torch.Tensor):
        """Decode a batch on the side stream, then write it into `buffer` once the steps enqueued so far
        (those reading the buffer's previous batch) are done; returns (batch, event of its readiness)."""
        consumer_done = torch.cuda.current_stream(self.augment.device).record_event()
        with torch.cuda.stream(self.stream):
            decoded = self.augment.decode(samples)  # first: its stream sync must not wait for the steps
            self.stream.wait_event(consumer_done)
            batch = self.augment.assemble(*decoded, out=buffer)
            return batch, self.stream.record_event()

    def hand_over(self, batch: Batch, ready: torch.cuda.Event) -> Batch:
        """The batch for the current stream: it waits for the side stream's work on it, and the allocator
        keeps the side stream's box/label tensors until the current stream is done with them."""
        stream = torch.cuda.current_stream(self.augment.device)
        stream.wait_event(ready)
        for tensor in (batch.boxes, batch.labels):
            if tensor.is_cuda:  # an all-unreadable batch is Batch.empty, on the host (record_stream has no CPU kernel)
                tensor.record_stream(stream)
        return batch


def gpu_loader(
    dataset: CocoDetection,
    sampler: EpochKeyedSampler,
    drop_last: bool,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    max_boxes: int,
) -> GpuLoader:
    """build_loader's GPU path: workers of JpegSamples (a batch is a list of samples) -> GpuAugment on `device`."""
    data_loader = sample_loader(JpegSamples(dataset), sampler, drop_last, batch_size, num_workers)
    augment = GpuAugment(device, dataset.train, max_boxes)
    return GpuLoader(dataset, data_loader, augment)


def sample_loader(
    samples: JpegSamples, sampler: EpochKeyedSampler, drop_last: bool, batch_size: int, num_workers: int, collate=list
) -> DataLoader:
    """The workers of the GPU and DALI paths: batches of `samples` (lists of dicts, through `collate`) in the
    sampler's (epoch, index) order, the workers started once and deaf to the stop signals (preemption.py)."""
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals_in_workers,
    )
