"""The DALI data path (--data-backend dali): the PyTorch path's sampler and random draws, DALI's pixel work.

Workers (DaliSamples, in a torch DataLoader with the PyTorch path's sampler): read a file's bytes and take the
sample's Draw from its (seed, epoch, index) key as the GPU path's workers do (draws.draw: its crop window, flip
and colour factors; so boxes and labels equal the PyTorch path's, a restarted epoch replays the same batches and
the ranks share an epoch as the other paths do). A file the JPEG check passes over (grayscale, CMYK, PNG, ...) is
decoded by OpenCV in the worker and shipped re-encoded as a lossless PNG; unreadable files are skipped and listed
in Batch.skipped, as on the other paths.

DALI (an external_source fed batch by batch): decoders.image_slice of exactly the PyTorch path's crop window
("mixed" = nvJPEG on the GPU when device_id is set, "cpu" otherwise; EXIF orientation applied) -> resize
(antialiased bilinear, PIL's filter) -> brightness_contrast, hsv (the same factors; DALI's arithmetic: contrast
about mid-grey, not the image's mean grey) -> crop_mirror_normalize with the flip (float32, CHW or
HWC = channels_last). With device_id=None the whole graph runs on the CPU (how the tests run it without a GPU).

Left different by design of DALI: a JPEG whose body is corrupt behind a sound header stops the pipeline with
DALI's error (the PyTorch path skips it): check a dataset with the PyTorch path first.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from ssdfast.data.batch import Batch, split_unreadable, with_copies
from ssdfast.data.coco import CocoDetection
from ssdfast.data.draws import HUE_UNITS
from ssdfast.data.gpu_pipeline import JpegSamples, batch_of, sample_loader
from ssdfast.data.sampler import EpochKeyedSampler
from ssdfast.data.torch_loader import TorchLoader
from ssdfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_pixels
from ssdfast.machinery.preemption import end_workers_at_exit

INSTALL_HINT = (
    "the DALI data path needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
    "(CUDA 13; nvidia-dali-cuda120 for CUDA 12), or drop --dali to use the PyTorch data path"
)
# DALI's inputs, one per external_source output, in this order.
INPUTS = ("encoded", "anchor", "shape", "flip", "brightness", "contrast", "saturation", "hue")


def require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{INSTALL_HINT} ({error})") from error


class DaliSamples(JpegSamples):
    """JpegSamples for DALI: every readable file as encoded bytes ("encoded"), and the crop as the pixel window
    (x0, y0) + (width, height) of the displayed image, cut as transforms.crop_pixels cuts it on the PyTorch path."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        sample = super().__getitem__(key)
        if "unreadable" in sample:
            return sample
        if "pixels" in sample:  # decoded by OpenCV (oriented): shipped as a lossless PNG
            pixels = sample.pop("pixels")
            height, width = pixels.shape[1:]
            rgb = np.ascontiguousarray(pixels.transpose(1, 2, 0))
            sample["encoded"] = cv2.imencode(".png", rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].ravel()
        else:
            sample["encoded"] = sample.pop("jpeg")
            height, width = sample.pop("displayed_size")  # DALI applies EXIF orientation as OpenCV does
        x0, y0, x1, y1 = crop_pixels(sample["draw"].window, height, width)
        sample["anchor"] = np.array([x0, y0], dtype=np.float32)
        sample["shape"] = np.array([x1 - x0, y1 - y0], dtype=np.float32)
        return sample


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
    source,
    *,
    jitter: bool,
    batch_size: int,
    size: int = 300,
    device_id: int | None = None,
    num_threads: int = 2,
    channels_last: bool = False,
):
    """A DALI pipeline of images from `source` (a generator function of input batches: per INPUTS, a list of
    per-image arrays; StopIteration ends the epoch), normalised [B, 3, S, S] (CHW) or [B, S, S, 3] (HWC);
    jitter: apply the colour factors (training)."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types

    dtypes = [types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.FLOAT, types.FLOAT, types.FLOAT, types.FLOAT]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=2)
    def ssd_pipeline():
        encoded, anchor, shape, flip, brightness, contrast, saturation, hue = fn.external_source(
            source=source, num_outputs=len(INPUTS), batch=True, dtype=dtypes, cycle="raise"
        )
        images = fn.decoders.image_slice(
            encoded,
            anchor,
            shape,
            normalized_anchor=False,
            normalized_shape=False,
            device="mixed" if device_id is not None else "cpu",
            output_type=types.RGB,
        )
        images = resize(images, size)
        if jitter:
            images = fn.brightness_contrast(images, brightness=brightness, contrast=contrast)
            images = fn.hsv(images, hue=hue, saturation=saturation)
        return fn.crop_mirror_normalize(
            images,
            mean=(IMAGENET_MEAN * 255).tolist(),
            std=(IMAGENET_STD * 255).tolist(),
            mirror=flip,
            dtype=types.FLOAT,
            output_layout="HWC" if channels_last else "CHW",
        )

    return ssd_pipeline()


class DaliLoader(TorchLoader):
    """The DALI path's Loader: a DataLoader of DaliSamples (the PyTorch path's sampler, so the same sharding,
    shuffling, (seed, epoch, index) keying and mid-epoch restart) feeding a DALI pipeline built for each pass.
    Boxes, labels, ids, sizes and unreadable files wait in a queue beside DALI, in the order fed."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader, *, max_boxes: int, device_id: int | None, **pipe):
        require_dali()
        super().__init__(dataset, loader)  # set_epoch and __len__ as the PyTorch path's
        self.train, self.max_boxes, self.device_id, self.pipe = dataset.train, max_boxes, device_id, pipe
        self.jitter = dataset.train  # colour jitter in the pipeline (tests turn it off to compare the geometry)
        self.channels_last = pipe.get("channels_last", False)

    def __iter__(self):
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pending: deque = deque()  # (readable samples, skipped paths) of the batches fed, oldest first
        # The workers start (fork) here, before DALI's threads exist: forking beside running native threads
        # can leave a child holding a lock one of them held.
        batches = iter(self.loader)

        def feed():
            for samples in batches:
                readable, skipped = self.readable(samples)
                pending.append((readable, skipped))
                inputs = readable or [PLACEHOLDER]  # DALI takes no empty batch: one stand-in, dropped after
                yield [[np.asarray(sample[name]) for sample in inputs] for name in INPUTS]

        pipe = build_pipeline(
            feed, jitter=self.jitter, batch_size=self.loader.batch_size, device_id=self.device_id, **self.pipe
        )
        # prepare_first_batch=False: a pass with nothing to read (a restart at the epoch's end, a rank without
        # validation images) yields no batch instead of DALI's "no data in the pipeline" error.
        outputs = DALIGenericIterator(
            pipe, ["images"], last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False, prepare_first_batch=False
        )
        for out in outputs:
            readable, skipped = pending.popleft()
            yield self.batch(out[0]["images"], readable, skipped)

    def readable(self, samples: list[dict]) -> tuple[list[dict], tuple[str, ...]]:
        """The samples DALI decodes and the unreadable paths; for training the unreadable ones are replaced by
        copies of readable ones (the batch keeps its size), as the other paths do."""
        good, skipped = split_unreadable(samples)
        return (with_copies(good, len(skipped)) if self.train and good else good), skipped

    def batch(self, images: torch.Tensor, samples: list[dict], skipped: tuple[str, ...]) -> Batch:
        if not samples:
            return Batch.empty(self.max_boxes, skipped)
        if self.channels_last:  # HWC from DALI -> an NCHW-shaped view in channels_last memory
            images = images.permute(0, 3, 1, 2)
        return batch_of(images, samples, self.max_boxes, skipped)


# A stand-in image for a batch whose files were all unreadable (DALI cannot run an empty batch).
PLACEHOLDER = {
    "encoded": cv2.imencode(".png", np.zeros((8, 8, 3), dtype=np.uint8))[1].ravel(),
    "anchor": np.zeros(2, dtype=np.float32),
    "shape": np.full(2, 8, dtype=np.float32),
    "flip": np.int32(0),
    "brightness": np.float32(1),
    "contrast": np.float32(1),
    "saturation": np.float32(1),
    "hue": np.float32(0),
}


def dali_loader(
    dataset: CocoDetection,
    sampler: EpochKeyedSampler,
    drop_last: bool,
    *,
    batch_size: int,
    num_workers: int,
    device_id: int | None,
    max_boxes: int,
    channels_last: bool = False,
) -> DaliLoader:
    """build_loader's DALI path: workers of DaliSamples (a batch is a list of samples) -> DALI on device_id
    (None: DALI's CPU-only mode), with max(num_workers, 1) DALI threads."""
    require_dali()
    if num_workers > 0:
        end_workers_at_exit()  # again, now that DALI's exit hook is registered: ours must run before it
    data_loader = sample_loader(DaliSamples(dataset), sampler, drop_last, batch_size, num_workers, dali_inputs)
    return DaliLoader(
        dataset,
        data_loader,
        max_boxes=max_boxes,
        device_id=device_id,
        num_threads=max(num_workers, 1),
        channels_last=channels_last,
    )


def dali_inputs(samples: list[dict]) -> list[dict]:
    """The DataLoader's collate (in the worker): each readable sample with its DALI inputs as arrays of
    DALI's dtypes (flip int32; the colour factors float32, hue in degrees: 360 / HUE_UNITS per hue unit)."""
    for sample in samples:
        if "unreadable" in sample:
            continue
        params = sample["draw"]
        sample.update(
            flip=np.int32(params.flip),
            brightness=np.float32(params.brightness),
            contrast=np.float32(params.contrast),
            saturation=np.float32(params.saturation),
            hue=np.float32(360 // HUE_UNITS * params.hue_shift),
        )
    return samples
